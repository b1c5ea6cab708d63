"""``RuntimeStorage``: what a broker needs from the place it keeps its state.

The broker decides; the storage only stores. A broker opens a transaction with
:meth:`RuntimeStorage.atomic`, reads and writes rows through the
:class:`StorageTransaction` it is given, and everything it did commits
together or not at all. Rows are plain dataclasses holding JSON-ready values;
times are seconds since the epoch as read from the storage's own clock (the
database server's clock for PostgreSQL), so that every broker process over one
database judges lease deadlines the same way.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fuseline.status import Status
from fuseline.workflow import WorkflowSchema

__all__ = [
    "RuntimeStorage",
    "Signal",
    "StorageTransaction",
    "StoredRun",
    "StoredStep",
    "StoredWorker",
    "WorkflowKey",
    "date_first_steps",
]

T = TypeVar("T")

WorkflowKey = tuple[str, str]
"""``(workflow_id, version)``."""


@dataclass
class StoredWorker:
    """A registered worker and the workflow versions it runs."""

    worker_id: str
    name: str | None
    workflows: list[WorkflowKey]
    registered_at: float
    last_seen_at: float


@dataclass
class StoredRun:
    """One run of a workflow version.

    Attributes:
        created_at: When the run was stored, by the storage's clock:
            :meth:`StorageTransaction.add_run` sets it.
        finished_steps: How many steps reached a final state by a report or a
            lease running out; it numbers them so that the first member of an
            OR group to finish is known.
        request_hash: Fingerprint of the dispatch request, compared when the
            same idempotency key comes again.
        seq: Creation order, assigned by the storage; newest runs have the
            highest number.
    """

    run_id: str
    workflow_id: str
    version: str
    inputs: dict[str, Any]
    status: Status
    created_at: float = 0.0
    finished_at: float | None = None
    cancel_requested: bool = False
    result: dict[str, Any] | None = None
    finished_steps: int = 0
    idempotency_key: str | None = None
    request_hash: str | None = None
    seq: int = 0


@dataclass
class StoredStep:
    """A step of a run that was enqueued, skipped or cancelled.

    Steps that are still waiting for their predecessors have no row at all:
    a row is created exactly once, when the rules decide the step's fate, and
    the storage's uniqueness on ``(run_id, step_name)`` makes a second
    enqueue impossible.

    Attributes:
        attempt: How many times the step was handed out.
        max_attempts: Hand-outs allowed before an expired lease fails the step.
        lease_seconds: Length of a lease (and of each heartbeat's extension).
        deadline: When the current lease runs out (RUNNING steps only).
        branch: For a SUCCEEDED step, the label its result chose.
        finish_order: The run's ``finished_steps`` count when this step finished.
        or_winners: For each OR-group parameter, the member it binds.
        ready_at: When the step was (last) put in the queue; the queue is FIFO.
    """

    run_id: str
    step_name: str
    workflow_id: str
    version: str
    status: Status = Status.PENDING
    attempt: int = 0
    max_attempts: int = 1
    lease_seconds: float = 30.0
    worker_id: str | None = None
    lease_token: str | None = None
    deadline: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    branch: str | None = None
    finish_order: int | None = None
    or_winners: dict[str, str] = field(default_factory=dict)
    ready_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


class StorageTransaction(ABC):
    """Reads and writes inside one transaction. Obtain one from ``RuntimeStorage.atomic``.

    Attributes:
        work_changed: Set by :meth:`notify_work`.
        runs_changed: Set by :meth:`notify_runs`.
    """

    work_changed: bool = False
    runs_changed: bool = False
    _after_commit: list[Callable[[], None]] | None = None

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction committed, before waiters are woken.

        Nothing is called when the transaction rolls back, and a transaction
        that is run again starts with no callbacks.
        """
        if self._after_commit is None:
            self._after_commit = []
        self._after_commit.append(callback)

    def committed(self) -> None:
        """Run the ``after_commit`` callbacks; backends call this right after COMMIT."""
        for callback in self._after_commit or ():
            callback()

    @abstractmethod
    def now(self) -> float:
        """The storage clock, in seconds since the epoch (fixed per transaction)."""

    # -- schemas ------------------------------------------------------------------
    @abstractmethod
    def get_schema(self, key: WorkflowKey) -> WorkflowSchema | None:
        """The schema stored under ``key``, if any."""

    @abstractmethod
    def add_schema(self, schema: WorkflowSchema) -> None:
        """Store ``schema`` unless its key is taken (then do nothing)."""

    @abstractmethod
    def list_schemas(self) -> list[WorkflowSchema]:
        """Every stored schema, by workflow id and version."""

    def schema_versions(self, workflow_id: str) -> list[str]:
        """The versions stored for ``workflow_id`` (backends answer this from an index)."""
        return [
            schema.version for schema in self.list_schemas() if schema.workflow_id == workflow_id
        ]

    # -- workers ------------------------------------------------------------------
    @abstractmethod
    def add_worker(self, worker: StoredWorker) -> None:
        """Store a new worker."""

    @abstractmethod
    def get_worker(self, worker_id: str) -> StoredWorker | None:
        """The worker with that id, if any."""

    @abstractmethod
    def touch_worker(self, worker_id: str, seen_at: float) -> None:
        """Record that the worker was heard from."""

    @abstractmethod
    def list_workers(self) -> list[StoredWorker]:
        """Every worker, oldest registration first."""

    # -- runs ---------------------------------------------------------------------
    @abstractmethod
    def add_run(self, run: StoredRun) -> bool:
        """Store a new run; False (and nothing stored) when its idempotency key is taken.

        The run is created now: ``run.created_at`` is set to the
        transaction's clock (:meth:`now`).
        Backends whose clock is a query may read it with the insert.
        """

    def add_run_with_steps(
        self, run: StoredRun, steps: Sequence[StoredStep], *, last: bool = False
    ) -> bool:
        """:meth:`add_run`, then :meth:`add_steps` of its first ``steps``.

        The steps are created when the run is: their ``ready_at``, and the
        ``finished_at`` of those that are not PENDING, become the run's
        ``created_at``. False, and nothing stored, when the run's
        idempotency key is taken. With ``last`` the caller writes nothing
        more in this transaction, so a backend may commit with it.
        """
        if not self.add_run(run):
            return False
        date_first_steps(run, steps)
        self.add_steps(steps)
        return True

    def add_run_with_steps_later(
        self, run: StoredRun, steps: Sequence[StoredStep]
    ) -> Callable[[], bool]:
        """:meth:`add_run_with_steps`, whose answer is read by calling what this returns.

        A backend may send the insert together with the statements that
        follow it in the transaction (a dispatch's claim for a waiting
        worker), so that they share one round trip to the database. Until
        the answer is read, the caller must not rely on the run existing:
        what it does meanwhile must be right whether or not the run was
        stored (the claim takes whatever is ready).
        """
        added = self.add_run_with_steps(run, steps)
        return lambda: added

    @abstractmethod
    def find_run_by_key(self, idempotency_key: str) -> StoredRun | None:
        """The run created with that idempotency key, if any."""

    @abstractmethod
    def get_run(self, run_id: str, *, lock: bool = False) -> StoredRun | None:
        """The run, if any. ``lock`` holds it until the transaction ends.

        Every change to a run's steps that depends on the state of its other
        steps (reports, expiries, cancellation) locks the run first, so those
        changes happen one after the other.
        """

    @abstractmethod
    def start_run(self, run_id: str) -> None:
        """Mark a PENDING run RUNNING (its first step was handed out); else do nothing."""

    @abstractmethod
    def update_run(self, run: StoredRun) -> None:
        """Write the run's status, result, finish time, counters and cancel flag."""

    @abstractmethod
    def list_runs(
        self,
        *,
        workflow_id: str | None,
        status: Status | None,
        limit: int,
        before_seq: int | None,
    ) -> list[StoredRun]:
        """Runs newest first, optionally filtered, older than ``before_seq`` when given."""

    @abstractmethod
    def delete_finished_runs(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` runs (with their steps) that finished before the time."""

    # -- steps --------------------------------------------------------------------
    @abstractmethod
    def steps_of(self, run_id: str, *, lock: bool = False) -> list[StoredStep]:
        """Every step row of the run; ``lock`` holds them until the transaction ends.

        Locking matters only to a change that rewrites queued rows (cancelling
        a run), which must not overwrite a claim made meanwhile.
        """

    @abstractmethod
    def get_step(self, run_id: str, step_name: str) -> StoredStep | None:
        """One step row, if it exists."""

    @abstractmethod
    def add_steps(self, steps: Sequence[StoredStep]) -> None:
        """Create step rows. Creating a row that exists is an error (a bug upstream)."""

    @abstractmethod
    def update_step(self, step: StoredStep) -> None:
        """Write every field of an existing step row."""

    @abstractmethod
    def claim_steps(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        tokens: Callable[[], str],
    ) -> list[StoredStep]:
        """Hand up to ``limit`` queued steps of ``workflows`` to the worker, oldest first.

        Each claimed row becomes RUNNING with its attempt counted, a new lease
        token from ``tokens()``, and a deadline ``lease_seconds`` from now. A
        step is never handed to two claims at once, also when several
        processes claim concurrently.
        """

    def claim_steps_with_runs(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        tokens: Callable[[], str],
        *,
        known: Collection[str] = (),
        start: bool = False,
        last: bool = False,
    ) -> tuple[list[StoredStep], dict[str, StoredRun]]:
        """:meth:`claim_steps`, and the runs of the claimed steps, read unlocked.

        Backends may claim and read in one round trip.

        Args:
            worker_id: The claiming worker.
            workflows: The workflow versions it runs.
            limit: How many steps at most.
            tokens: Makes a new lease token per step.
            known: Runs the caller holds already: they may be left out.
            start: Also mark the PENDING runs among those read RUNNING (a
                run starts with its first hand-out), with a conditional
                update, so that a cancel committed meanwhile stands. The
                runs come back as read, before that.
            last: The claim is the transaction's last write: a backend may
                commit with it. Afterwards the transaction may still read
                (finished steps' results, which no longer change), and
                wake-ups are still sent, but it must not write.
        """
        rows = self.claim_steps(worker_id, workflows, limit, tokens)
        runs = self.runs_by_id(sorted({row.run_id for row in rows} - set(known)))
        if start:
            _start(self, runs)
        return rows, runs

    @abstractmethod
    def leases_of(self, worker_id: str) -> tuple[list[StoredStep], set[str]]:
        """What a heartbeat reads: the worker's RUNNING steps, and which runs were asked to cancel.

        The steps are those whose lease the worker holds, live or expired.

        Backends may read both, and the clock, at once.
        """

    @abstractmethod
    def extend_lease(self, step: StoredStep, deadline: float) -> bool:
        """Move a RUNNING step's deadline if it still holds ``step.lease_token``."""

    def extend_leases(
        self, leases: Sequence[tuple[StoredStep, float]], *, last: bool = False
    ) -> set[tuple[str, str]]:
        """:meth:`extend_lease` for each ``(step, deadline)`` (backends may do it at once).

        With ``last`` nothing is written after it, and a backend may commit
        in the same round trip.

        Returns:
            The ``(run_id, step_name)`` of the steps whose deadline moved.
        """
        return {
            (step.run_id, step.step_name)
            for step, deadline in leases
            if self.extend_lease(step, deadline)
        }

    @abstractmethod
    def expired_steps(self, limit: int) -> list[tuple[str, str]]:
        """``(run_id, step_name)`` of RUNNING steps whose deadline has passed."""

    @abstractmethod
    def results_of(self, run_id: str, step_names: Sequence[str]) -> dict[str, Any]:
        """The results of those steps of the run that SUCCEEDED."""

    def runs_by_id(self, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, StoredRun]:
        """The runs that exist among ``run_ids`` (backends may read them at once).

        With ``lock``, they are locked as :meth:`get_run` locks, in the order
        of their ids; pass them sorted.
        """
        found = {run_id: self.get_run(run_id, lock=lock) for run_id in run_ids}
        return {run_id: run for run_id, run in found.items() if run is not None}

    def steps_of_runs(self, run_ids: Sequence[str]) -> dict[str, list[StoredStep]]:
        """:meth:`steps_of` (unlocked) for each of ``run_ids``."""
        return {run_id: self.steps_of(run_id) for run_id in run_ids}

    def runs_with_steps(
        self, run_ids: Sequence[str], *, lock: bool = False
    ) -> tuple[dict[str, StoredRun], dict[str, list[StoredStep]]]:
        """:meth:`runs_by_id`, then :meth:`steps_of_runs` of the same ids.

        The steps are read once the runs' locks are held, so they include
        everything committed by whoever held a lock before. Backends may send
        both reads in one round trip.
        """
        runs = self.runs_by_id(run_ids, lock=lock)
        return runs, self.steps_of_runs(list(runs))

    def start_runs(self, run_ids: Sequence[str]) -> None:
        """:meth:`start_run` for each of ``run_ids``, in their order."""
        for run_id in run_ids:
            self.start_run(run_id)

    def results_for(self, wanted: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Any]]:
        """:meth:`results_of` for each ``(run_id, step_names)``, in order."""
        return [self.results_of(run_id, names) for run_id, names in wanted]

    # -- wake-ups -----------------------------------------------------------------
    @abstractmethod
    def notify_work(self) -> None:
        """After commit, wake claims waiting for work (in every process if possible)."""

    # Backends that know which steps a transaction queued call these, so that
    # a transaction that claimed every step it queued wakes no one: a report
    # that queues its successor and claims it (a chain's usual step) has
    # nothing new to offer to waiting claims.
    _queued: set[tuple[str, str]] | None = None
    _wake_anyway: bool = False

    def _made_ready(self, step: StoredStep) -> None:
        """Note that this transaction left ``step`` ready to claim."""
        if self._queued is None:
            self._queued = set()
        self._queued.add((step.run_id, step.step_name))
        self.work_changed = True

    def _took(self, steps: Iterable[StoredStep]) -> None:
        """Note that this transaction claimed ``steps`` itself."""
        if self._queued:
            self._queued.difference_update((step.run_id, step.step_name) for step in steps)

    def settle_wakeups(self) -> None:
        """Before commit: wake claims only if a step queued here is still unclaimed."""
        if self._queued is not None:
            self.work_changed = self._wake_anyway or bool(self._queued)

    @abstractmethod
    def notify_runs(self) -> None:
        """After commit, wake callers waiting for runs to finish."""


def date_first_steps(run: StoredRun, steps: Sequence[StoredStep]) -> None:
    """Date a new run's first ``steps`` from its ``created_at``.

    They become ready when the run is created, and those that are not
    PENDING finish then too.
    """
    for step in steps:
        step.ready_at = run.created_at
        if step.status is not Status.PENDING:
            step.finished_at = run.created_at


def _start(t: StorageTransaction, runs: Mapping[str, StoredRun]) -> None:
    """Mark the PENDING ones of ``runs`` RUNNING.

    Sorted, so that claims starting the same runs lock them in the same order.
    """
    t.start_runs(sorted(run_id for run_id, run in runs.items() if run.status is Status.PENDING))


class Signal:
    """A wake-up hint that any number of threads can wait for.

    It carries no data: a waiter that wakes up looks at the storage again.
    Waiting on a generation number, not a flag, means a hint given between a
    waiter's last look and its wait is never missed.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        """The number of hints given so far."""
        return self._generation

    def fire(self) -> None:
        """Wake every waiter."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def poke(self) -> None:
        """Wake every waiter to look at its own ``until`` condition; no hint is given."""
        with self._condition:
            self._condition.notify_all()

    def wait(self, since: int, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait until a hint newer than ``since``, ``until()`` holds or ``timeout`` seconds.

        Returns:
            True on a hint or when ``until()`` held.
        """
        with self._condition:
            if until is None:
                return self._condition.wait_for(lambda: self._generation != since, timeout)
            return self._condition.wait_for(lambda: self._generation != since or until(), timeout)


class RuntimeStorage(ABC):
    """Where a broker keeps schemas, workers, runs and step rows.

    Attributes:
        work: Fired after a commit that made steps ready.
        runs: Fired after a commit that finished a run.
        poll_interval: How long a waiter may rely on the signals alone before
            looking at the storage again (other processes may have changed it
            without this process hearing of it).
        description: Where the state lives, safe to log (no password).
    """

    poll_interval: float = 0.5
    description: str = "storage"

    def __init__(self) -> None:
        self.work = Signal()
        self.runs = Signal()

    def _committed(self, transaction: StorageTransaction) -> None:
        """What follows a commit: the transaction's callbacks, then the wake-ups."""
        transaction.committed()
        if transaction.work_changed:
            self.work.fire()
        if transaction.runs_changed:
            self.runs.fire()

    @abstractmethod
    def atomic(self, body: Callable[[StorageTransaction], T], *, write: bool = True) -> T:
        """Run ``body`` in one transaction and return what it returns.

        Everything ``body`` wrote commits when it returns and is rolled back
        when it raises. A transaction that lost a race with another one
        (deadlock, serialization failure) is run again from the start, so
        ``body`` must not have effects outside the transaction.

        With ``write=False`` the body only reads, and locks nothing: a
        backend may then run its statements without a transaction around
        them, each seeing what was committed before it started (PostgreSQL
        does, and refuses writes and row locks there).

        Raises:
            BrokerUnavailableError: The storage cannot be reached.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and threads."""
