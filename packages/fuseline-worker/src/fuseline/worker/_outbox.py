"""The outbox: delivers step reports, and keeps them while the broker is away.

Reports are sent by background threads. A thread that finds several reports
waiting sends them together, in one request that the broker handles in one
transaction (``report_steps``), so a busy worker pays for one request per
batch instead of one per step; a report that finds the outbox idle goes out
at once, alone. When the broker cannot be reached a batch is kept by its
thread and retried with backoff, while heartbeats keep its leases alive, so
a short outage loses no result. When the worker may take more work, reports
also claim as many next ready steps as they free slots, and each claimed
step takes over a reported step's slot.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from fuseline.clients import Backoff, BrokerClient
from fuseline.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from fuseline.messages import ReportBatchReply, StepAssignment, StepError, StepReport
from fuseline.status import Status
from fuseline.worker._held import HeldStep, HeldSteps
from fuseline.worker._transient import is_transient

__all__ = ["Outbox"]

log = logging.getLogger("fuseline.worker")


class Outbox:
    """Threads that deliver reports and hand out the steps claimed with them.

    Args:
        client: The broker client.
        worker_id: Returns the worker's current id.
        held: The held steps; a step's slot is given back once its report is settled.
        may_claim: Whether a report may also claim the next step right now.
        on_claimed: Called with a reported step and a step claimed with its report;
            the reported step is None when the claimed step has no freed slot to take.
        on_fatal: Called when the broker refuses the worker's credentials.
        halting: Set when the worker stops at once: pending reports are dropped.
        max_backoff: The longest wait between two delivery attempts.
        senders: How many requests may be in flight at once.
        batch: The most reports one request carries.
    """

    def __init__(
        self,
        client: BrokerClient,
        worker_id: Callable[[], str],
        held: HeldSteps,
        *,
        may_claim: Callable[[], bool],
        on_claimed: Callable[[HeldStep | None, StepAssignment], None],
        on_fatal: Callable[[BaseException], None],
        halting: threading.Event,
        max_backoff: float = 30.0,
        senders: int = 1,
        batch: int = 1,
    ) -> None:
        self._senders = max(1, senders)
        self._batch = max(1, batch)
        # Cleared when the broker turns out not to know batches (an older one).
        self._batching = self._batch > 1
        self._client = client
        self._worker_id = worker_id
        self._held = held
        self._may_claim = may_claim
        self._on_claimed = on_claimed
        self._on_fatal = on_fatal
        self._halting = halting
        self._max_backoff = max_backoff
        self._queue: deque[tuple[HeldStep, StepReport]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the delivering daemon threads."""
        for _ in range(self._senders):
            thread = threading.Thread(target=self._run, name="fuseline-outbox", daemon=True)
            thread.start()
            self._threads.append(thread)

    def put(self, held: HeldStep, report: StepReport) -> None:
        """Queue ``report`` for delivery."""
        with self._cond:
            self._queue.append((held, report))
            self._cond.notify()

    def close(self) -> None:
        """Stop the threads; reports still queued are dropped (their leases will expire)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        for held, _ in left:
            log.warning(
                "%s: result not delivered before exit; the broker will hand the step out again",
                held.label,
            )
            self._held.release(held)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Taken off the queue now: its thread settles them whatever happens
                # (delivered, refused, or dropped when the worker stops).
                size = self._batch if self._batching else 1
                taken = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            if len(taken) == 1:
                self._deliver(*taken[0])
            else:
                self._deliver_batch(taken)

    def _deliver_batch(self, batch: list[tuple[HeldStep, StepReport]]) -> None:
        backoff = Backoff(initial=0.2, maximum=self._max_backoff)
        attempt = 0
        while True:
            batch = self._without_abandoned(batch)
            if len(batch) <= 1:
                for held, report in batch:
                    self._deliver(held, report)
                return
            claim = len(batch) if self._may_claim() else 0
            try:
                reply = self._client.report_steps(
                    self._worker_id(), [report for _, report in batch], claim=claim
                )
            except Exception as exc:
                if is_transient(exc) and not self._halting.is_set() and not self._closing.is_set():
                    log.warning(
                        "cannot deliver %d reports, broker unreachable (%s); keeping them "
                        "and retrying",
                        len(batch),
                        exc,
                    )
                    self._closing.wait(backoff.delay(attempt))
                    attempt += 1
                    continue
                if isinstance(exc, (AuthenticationError, PermissionDeniedError)) or is_transient(
                    exc
                ):
                    for held, _ in batch:
                        self._settle_refused(held, exc)
                    return
                # Something about the request as a whole (too large together,
                # or a broker without batches): send the reports one by one,
                # which settles each of them on its own.
                if type(exc) is NotFoundError:
                    log.info("the broker takes no batches of reports; sending them one by one")
                    self._batching = False
                for held, report in batch:
                    self._deliver(held, report)
                return
            self._settle_batch(batch, reply)
            return

    def _without_abandoned(
        self, batch: list[tuple[HeldStep, StepReport]]
    ) -> list[tuple[HeldStep, StepReport]]:
        return [(held, report) for held, report in batch if not self._dropped(held)]

    def _dropped(self, held: HeldStep) -> bool:
        """Whether ``held`` was abandoned; its slot is then given back unreported."""
        if held.abandoned is None:
            return False
        log.info("%s: not reporting it, %s", held.label, held.abandoned)
        self._held.release(held)
        return True

    def _settle_batch(
        self, batch: list[tuple[HeldStep, StepReport]], reply: ReportBatchReply
    ) -> None:
        if len(reply.outcomes) != len(batch):  # pragma: no cover - a broker bug
            log.error(
                "the broker answered %d reports with %d outcomes; the steps will be handed out "
                "again when their leases expire",
                len(batch),
                len(reply.outcomes),
            )
            for held, _ in batch:
                self._held.release(held)
            return
        claimed = iter(reply.assignments)
        resend: list[tuple[HeldStep, StepReport]] = []
        for (held, report), outcome in zip(batch, reply.outcomes, strict=True):
            exc = outcome.error()
            if exc is not None and (replaced := _as_failed(held, report, exc)) is not None:
                resend.append((held, replaced))
                continue
            if exc is not None:
                self._settle_refused(held, exc, release=False)
            following = next(claimed, None)
            if following is not None:
                self._on_claimed(held, following)
            else:
                self._held.release(held)
        # Only when a result was refused and its step is reported again as
        # FAILED: the step still holds its slot, so the claimed step takes one
        # more for a moment.
        for following in claimed:
            self._on_claimed(None, following)
        for held, report in resend:
            self._deliver(held, report)

    def _deliver(self, held: HeldStep, report: StepReport) -> None:
        backoff = Backoff(initial=0.2, maximum=self._max_backoff)
        attempt = 0
        while True:
            if self._dropped(held):
                return
            claim_next = self._may_claim()
            try:
                claimed = self._client.report_step(self._worker_id(), report, claim_next=claim_next)
            except Exception as exc:
                if is_transient(exc) and not self._halting.is_set() and not self._closing.is_set():
                    log.warning(
                        "%s: cannot deliver the report, broker unreachable (%s); "
                        "keeping it and retrying",
                        held.label,
                        exc,
                    )
                    self._closing.wait(backoff.delay(attempt))
                    attempt += 1
                    continue
                replaced = _as_failed(held, report, exc)
                if replaced is not None:
                    report = replaced
                    continue
                self._settle_refused(held, exc)
                return
            if claimed is not None:
                self._on_claimed(held, claimed)
            else:
                self._held.release(held)
            return

    def _settle_refused(self, held: HeldStep, exc: BaseException, *, release: bool = True) -> None:
        if release:
            self._held.release(held)
        if isinstance(exc, (ConflictError, NotFoundError)):
            log.warning(
                "%s: the broker rejected the report (%s); another worker owns the step now "
                "or its run is over",
                held.label,
                exc,
            )
        elif isinstance(exc, (AuthenticationError, PermissionDeniedError)):
            self._on_fatal(exc)
        elif is_transient(exc):
            log.warning(
                "%s: report dropped: the broker is unreachable and the worker is stopping",
                held.label,
            )
        else:
            log.error("%s: report failed: %s: %s", held.label, type(exc).__name__, exc)


def _as_failed(held: HeldStep, report: StepReport, exc: BaseException) -> StepReport | None:
    """The report to send instead when the broker refused the result itself (too large, say).

    The step then failed, and the user should see why. None when ``exc`` is
    not about the result, or the report already says FAILED.
    """
    if not isinstance(exc, InvalidInputError) or report.state is Status.FAILED:
        return None
    log.warning("%s: the broker refused its result: %s", held.label, exc)
    return report.model_copy(
        update={"state": Status.FAILED, "result": None, "error": StepError.from_exception(exc)}
    )
