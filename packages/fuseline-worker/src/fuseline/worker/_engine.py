"""``ProcessEngine``: a worker that takes steps from a broker, runs them and reports back."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fuseline.clients import Backoff, BrokerClient, LocalBrokerClient
from fuseline.errors import SchemaConflictError, WorkerNotFoundError
from fuseline.messages import StepAssignment
from fuseline.worker._executor import StepExecutor, SyncSteps
from fuseline.worker._heartbeat import Heartbeat
from fuseline.worker._held import HeldStep, HeldSteps, Phase
from fuseline.worker._outbox import Outbox
from fuseline.worker._signals import StopSignals
from fuseline.worker._transient import is_transient
from fuseline.workflow import Workflow

__all__ = ["ProcessEngine"]

log = logging.getLogger("fuseline.worker")

T = TypeVar("T")


@dataclass
class _Session:
    """The machinery of one ``work()`` or ``serve()`` call."""

    held: HeldSteps
    executor: StepExecutor
    heartbeat: Heartbeat
    outbox: Outbox


class ProcessEngine:
    """A worker: registers its workflows with a broker, then runs the steps it is handed.

    Each step runs with its own run's inputs and its predecessors' results,
    through the same code as ``Workflow.run()``, so policies, conditions and
    hooks behave identically. While steps run, heartbeats keep their leases;
    a step whose lease is lost or whose run is cancelled is dropped, never
    reported.

    Args:
        client_or_broker: A ``BrokerClient`` (``LocalBrokerClient``,
            ``HttpBrokerClient``), or a broker object, which is wrapped in a
            ``LocalBrokerClient``.
        workflows: The workflows this worker runs (one or several).
        concurrency: How many steps may run at once.
        name: A name for the worker, shown by the broker's worker list.
        sync_steps: ``"thread"`` runs sync steps in threads; ``"process"``
            runs each in a forked child process that can be killed when its
            lease is lost, its run is cancelled or the worker stops at once
            (POSIX only). Async steps always run on the worker's event loop.
        poll_wait: Seconds ``serve()`` waits at the broker for work before
            asking again; it also bounds how long a stop request waits for an
            unanswered poll.
        grace_period: Seconds a graceful stop waits for held steps to finish
            and be reported; steps still running after it are abandoned and
            the broker hands them out again once their leases expire.
        heartbeat_interval: Seconds between heartbeats; by default a third of
            the shortest lease held.
        max_backoff: Longest wait between retries while the broker is unreachable.
    """

    def __init__(
        self,
        client_or_broker: BrokerClient | Any,
        workflows: Workflow | Iterable[Workflow],
        *,
        concurrency: int = 1,
        name: str | None = None,
        sync_steps: SyncSteps = "thread",
        poll_wait: float = 5.0,
        grace_period: float = 30.0,
        heartbeat_interval: float | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        if not _is_count(concurrency):
            raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        if sync_steps not in ("thread", "process"):
            raise ValueError(f"sync_steps must be 'thread' or 'process', got {sync_steps!r}")
        for label, value in (
            ("poll_wait", poll_wait),
            ("grace_period", grace_period),
            ("max_backoff", max_backoff),
        ):
            if not value >= 0:
                raise ValueError(f"{label} must be zero or more seconds, got {value!r}")
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
        self.client: BrokerClient = _as_client(client_or_broker)
        self.workflows: list[Workflow] = _as_workflows(workflows)
        self._by_key = _index(self.workflows)
        self.concurrency = concurrency
        self.name = name
        self.sync_steps: SyncSteps = sync_steps
        self.poll_wait = poll_wait
        self.grace_period = grace_period
        self.heartbeat_interval = heartbeat_interval
        self.max_backoff = max_backoff
        self.worker_id: str | None = None
        self._stopping = threading.Event()
        self._halting = threading.Event()
        self._active = threading.Lock()
        self._session: _Session | None = None
        self._fatal: BaseException | None = None

    def __repr__(self) -> str:
        keys = ", ".join(f"{wid} v{version}" for wid, version in self._by_key)
        return f"<ProcessEngine worker_id={self.worker_id!r} workflows=[{keys}]>"

    # -- public API --------------------------------------------------------------
    def register(self) -> str:
        """Register the workflows with the broker (once) and return the worker id.

        Retries with backoff while the broker is unreachable.

        Raises:
            SchemaConflictError: The broker holds one of these workflow
                versions with a different graph; bump the version.
            AuthenticationError: The broker refused the credentials.
        """
        if self.worker_id is None:
            schemas = [wf.to_schema() for wf in self._by_key.values()]
            worker_id = self._retrying(
                lambda: self.client.register_worker(schemas, name=self.name), "register"
            )
            if worker_id is None:
                raise RuntimeError("the worker was stopped before it could register")
            self.worker_id = worker_id
            log.info(
                "registered as worker %s%s for %s",
                worker_id,
                f" ({self.name})" if self.name else "",
                ", ".join(f"{s.workflow_id} v{s.version}" for s in schemas),
            )
        return self.worker_id

    def work(self) -> int:
        """Run ready steps until none is left, then return how many steps ran.

        Registers first if needed. Returns once the broker has no ready step
        for this worker and every step taken was run and reported.
        """
        return self._run(serving=False, handle_signals=False)

    def serve(self, *, handle_signals: bool = True) -> int:
        """Run steps until stopped, waiting at the broker for work; return how many ran.

        Args:
            handle_signals: Stop gracefully on SIGTERM/SIGINT and at once on a
                second one (only when called from the main thread). The second
                signal raises :class:`~fuseline.worker.ImmediateStop`.
        """
        return self._run(serving=True, handle_signals=handle_signals)

    def stop(self, *, immediately: bool = False) -> None:
        """Ask ``work()``/``serve()`` to stop; safe to call from any thread.

        Args:
            immediately: Drop held steps at once (cancelling async steps and
                killing child processes) instead of letting them finish within
                the grace period.
        """
        self._stopping.set()
        if immediately:
            self._halting.set()
            self._abandon_all("the worker is stopping at once")
        session = self._session
        if session is not None:
            session.held.wake()

    # -- the loops ---------------------------------------------------------------
    def _run(self, *, serving: bool, handle_signals: bool) -> int:
        if not self._active.acquire(blocking=False):
            raise RuntimeError("this ProcessEngine is already working; start another one instead")
        try:
            self._fatal = None
            with contextlib.ExitStack() as stack:
                if handle_signals:
                    stack.enter_context(
                        StopSignals(lambda now: self.stop(immediately=now), self.describe_held)
                    )
                return self._run_session(serving)
        finally:
            # A stop applies to the call it interrupted; the next call starts afresh.
            self._stopping.clear()
            self._halting.clear()
            self._active.release()

    def _run_session(self, serving: bool) -> int:
        try:
            self.register()
        except RuntimeError:
            if self._stopping.is_set():
                return 0
            raise
        held = HeldSteps(self.concurrency)
        outbox = Outbox(
            self.client,
            self._current_worker_id,
            held,
            may_claim=lambda: not self._stopping.is_set(),
            on_claimed=self._claimed_with_report,
            on_fatal=self._on_fatal,
            halting=self._halting,
            max_backoff=self.max_backoff,
            senders=_senders(self.concurrency),
            batch=self.concurrency,
        )
        executor = StepExecutor(self._by_key, held, outbox, sync_steps=self.sync_steps)
        heartbeat = Heartbeat(
            self.client, self._current_worker_id, held, self._on_gone, self.heartbeat_interval
        )
        session = self._session = _Session(held, executor, heartbeat, outbox)
        outbox.start()
        heartbeat.start()
        try:
            if serving:
                self._serve_loop(session)
            else:
                self._work_loop(session)
            self._drain(session)
        except BaseException:
            self.stop(immediately=True)
            raise
        finally:
            heartbeat.stop()
            outbox.close()
            executor.close()
            self._session = None
        if self._fatal is not None:
            raise self._fatal
        return executor.finished

    def _work_loop(self, session: _Session) -> None:
        held = session.held
        while not self._stopping.is_set():
            free = held.reserve_free(self._stopping.is_set)
            if not free:
                return
            generation = held.generation
            claimed = self._claim(free, wait=0.0)
            self._take_all(session, free, claimed)
            if claimed:
                continue
            if not held.busy():
                if held.generation == generation:
                    return  # nothing ready, nothing held, nothing reported since we asked
                continue
            # Our held steps' reports are what can make new steps ready.
            held.wait_for_change(generation, self._stopping.is_set)

    def _serve_loop(self, session: _Session) -> None:
        held = session.held
        while not self._stopping.is_set():
            free = held.reserve_free(self._stopping.is_set)
            if not free:
                return
            self._take_all(session, free, self._claim(free, wait=self.poll_wait))

    def _drain(self, session: _Session) -> None:
        if self._halting.is_set():
            return
        live = session.held.live()
        if live:
            log.info("waiting up to %gs for %d held step(s) to end", self.grace_period, len(live))
        until = time.monotonic() + self.grace_period
        if not session.held.wait_settled(until, self._halting.is_set):
            self._abandon_all("the grace period ended before it finished")

    # -- claiming ----------------------------------------------------------------
    def _claim(self, count: int, *, wait: float) -> list[StepAssignment]:
        def get() -> list[StepAssignment]:
            return self.client.get_steps(self._current_worker_id(), max_steps=count, wait=wait)

        return self._retrying(get, "ask for work") or []

    def _take_all(self, session: _Session, reserved: int, claimed: list[StepAssignment]) -> None:
        taken = [HeldStep(assignment) for assignment in claimed]
        for held in taken:
            session.held.add(held)
        session.held.unreserve(reserved - len(taken))
        for held in taken:
            session.heartbeat.nudge(held.lease_seconds)
        for held in taken:
            session.executor.start(held)

    def _claimed_with_report(self, reported: HeldStep | None, assignment: StepAssignment) -> None:
        session = self._session
        if session is None:  # pragma: no cover - the outbox stops before the session ends
            return
        held = HeldStep(assignment)
        if reported is None:
            session.held.admit(held)
        else:
            session.held.hand_over(reported, held)
        session.heartbeat.nudge(held.lease_seconds)
        session.executor.start(held)

    def _retrying(self, call: Callable[[], T], what: str) -> T | None:
        """Call ``call``, retrying while the broker is unreachable; None once stopping."""
        backoff = Backoff(initial=0.2, maximum=self.max_backoff)
        failures = 0
        while not self._stopping.is_set():
            try:
                value = call()
            except WorkerNotFoundError:
                log.warning(
                    "the broker does not know worker %s any more; registering again",
                    self.worker_id,
                )
                self.worker_id = None
                self.register()
                continue
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.delay(failures)
                failures += 1
                log.warning(
                    "cannot %s: broker unreachable (%s: %s); retrying in %.1fs",
                    what,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._stopping.wait(delay)
                continue
            if failures:
                log.info("the broker is reachable again")
            return value
        return None

    # -- callbacks from other threads -------------------------------------------
    def _current_worker_id(self) -> str:
        if self.worker_id is None:  # pragma: no cover - registered before any thread starts
            raise RuntimeError("the worker is not registered")
        return self.worker_id

    def _on_gone(self, held: HeldStep, reason: str) -> None:
        session = self._session
        if session is not None and session.held.abandon(held, reason):
            if held.cancel is None and held.phase is Phase.RUNNING:
                log.warning("%s: %s; dropping its result when its thread ends", held.label, reason)
            else:
                log.warning("%s: %s; stopped working on it", held.label, reason)

    def _on_fatal(self, exc: BaseException) -> None:
        log.error("the broker refused this worker: %s: %s", type(exc).__name__, exc)
        self._fatal = exc
        self.stop(immediately=True)

    def _abandon_all(self, reason: str) -> None:
        session = self._session
        if session is None:
            return
        for held in session.held.all():
            if session.held.abandon(held, reason):
                log.warning("%s: abandoned, %s", held.label, reason)

    def describe_held(self) -> str:
        """What a graceful stop will wait for, in a few words (for log lines)."""
        session = self._session
        count = 0 if session is None else len(session.held.live())
        return f"finishing {count} held step(s) within {self.grace_period:g}s"


def _senders(concurrency: int) -> int:
    """How many report requests a worker keeps in flight.

    Fewer requests than steps, so that reports finishing while one is in
    flight wait for the next and go together (one request and one broker
    transaction for several steps); more than one, so that a slow answer
    does not hold up every report.
    """
    return min(concurrency, 2)


def _is_count(value: object) -> bool:
    # Checked at run time: settings often come from untyped configuration.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _as_client(client_or_broker: Any) -> BrokerClient:
    if isinstance(client_or_broker, BrokerClient):
        return client_or_broker
    needed = ("register_worker", "get_step", "report_step")
    if not all(hasattr(client_or_broker, method) for method in needed):
        raise TypeError(
            "ProcessEngine needs a BrokerClient (LocalBrokerClient, HttpBrokerClient) or a "
            f"broker object, got {client_or_broker!r}"
        )
    return LocalBrokerClient(client_or_broker)


def _as_workflows(workflows: Workflow | Iterable[Workflow]) -> list[Workflow]:
    found = [workflows] if isinstance(workflows, Workflow) else list(workflows)
    if not found:
        raise ValueError("ProcessEngine needs at least one workflow to run")
    for wf in found:
        if not isinstance(wf, Workflow):
            raise TypeError(f"ProcessEngine runs Workflow objects, got {wf!r}")
    return found


def _index(workflows: list[Workflow]) -> dict[tuple[str, str], Workflow]:
    index: dict[tuple[str, str], Workflow] = {}
    for wf in workflows:
        key = (wf.workflow_id, wf.version)
        known = index.get(key)
        if known is None:
            index[key] = wf
        elif known is not wf and known.to_schema() != wf.to_schema():
            raise SchemaConflictError(
                f"Two different workflows are both {wf.workflow_id!r} version {wf.version!r}; "
                "give them different ids or bump the version of one."
            )
    return index
