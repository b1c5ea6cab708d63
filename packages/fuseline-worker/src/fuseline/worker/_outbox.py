"""The outbox: delivers step reports, and keeps them while the broker is away.

Reports are sent by background threads, as many as the worker runs steps at
once (reports of different steps do not depend on each other, and one report
waiting for its answer must not hold up the others). When the broker cannot
be reached a report is kept by its thread and retried with backoff, while
heartbeats keep its lease alive, so a short outage loses no result. When the
worker may take more work, each report also claims the next ready step
(``claim_next``), which then takes over the reported step's slot.
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
from fuseline.messages import StepAssignment, StepError, StepReport
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
        on_claimed: Called with the reported step and the step claimed with its report.
        on_fatal: Called when the broker refuses the worker's credentials.
        halting: Set when the worker stops at once: pending reports are dropped.
        max_backoff: The longest wait between two delivery attempts.
        senders: How many reports may be in flight at once.
    """

    def __init__(
        self,
        client: BrokerClient,
        worker_id: Callable[[], str],
        held: HeldSteps,
        *,
        may_claim: Callable[[], bool],
        on_claimed: Callable[[HeldStep, StepAssignment], None],
        on_fatal: Callable[[BaseException], None],
        halting: threading.Event,
        max_backoff: float = 30.0,
        senders: int = 1,
    ) -> None:
        self._senders = max(1, senders)
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
                # Taken off the queue now: its thread settles it whatever happens
                # (delivered, refused, or dropped when the worker stops).
                held, report = self._queue.popleft()
            self._deliver(held, report)

    def _deliver(self, held: HeldStep, report: StepReport) -> None:
        backoff = Backoff(initial=0.2, maximum=self._max_backoff)
        attempt = 0
        while True:
            if held.abandoned is not None:
                log.info("%s: not reporting it, %s", held.label, held.abandoned)
                self._held.release(held)
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
                if isinstance(exc, InvalidInputError) and report.state is not Status.FAILED:
                    # The broker refused the result itself (too large, say): the
                    # step failed, and the user should see why.
                    log.warning("%s: the broker refused its result: %s", held.label, exc)
                    report = report.model_copy(
                        update={
                            "state": Status.FAILED,
                            "result": None,
                            "error": StepError.from_exception(exc),
                        }
                    )
                    continue
                self._settle_refused(held, exc)
                return
            if claimed is not None:
                self._on_claimed(held, claimed)
            else:
                self._held.release(held)
            return

    def _settle_refused(self, held: HeldStep, exc: BaseException) -> None:
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
