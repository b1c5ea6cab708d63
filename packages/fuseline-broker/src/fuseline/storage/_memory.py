"""Memory storage: the state in this process's dictionaries, for tests and demos.

One lock makes transactions take turns. Every write records how to undo
itself, so a transaction that raises leaves nothing behind, exactly as a
database rollback would; reads hand out copies, so a caller changing a row it
read changes nothing until it writes the row back. Queued steps are kept per
workflow version in insertion order, which makes a claim take the oldest one
without scanning the rest.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fuseline.status import Status
from fuseline.storage._base import (
    RuntimeStorage,
    StorageTransaction,
    StoredRun,
    StoredStep,
    StoredWorker,
    WorkflowKey,
)
from fuseline.workflow import WorkflowSchema

__all__ = ["MemoryStorage"]

T = TypeVar("T")
R = TypeVar("R")

StepKey = tuple[str, str]


def _seq(run: StoredRun) -> int:
    return run.seq


def _copy(row: R) -> R:
    # A shallow copy: the broker replaces nested values, it never edits them.
    # (dataclasses.replace is several times slower, and this runs per row read.)
    clone: R = object.__new__(type(row))
    clone.__dict__.update(row.__dict__)
    return clone


class _Tables:
    """The data, and indexes that make claims and expiries cheap."""

    def __init__(self) -> None:
        self.schemas: dict[WorkflowKey, WorkflowSchema] = {}
        self.workers: dict[str, StoredWorker] = {}
        self.runs: dict[str, StoredRun] = {}
        self.run_by_key: dict[str, str] = {}
        self.steps: dict[str, dict[str, StoredStep]] = {}
        self.queued: dict[WorkflowKey, dict[StepKey, None]] = {}
        self.running: dict[StepKey, StoredStep] = {}
        self.seq = itertools.count(1)


class _MemoryTransaction(StorageTransaction):
    def __init__(self, tables: _Tables) -> None:
        self._t = tables
        self._undo: list[Callable[[], object]] = []
        self._now: float | None = None
        self.work_changed = False
        self.runs_changed = False

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            undo()

    def now(self) -> float:
        if self._now is None:
            self._now = time.time()
        return self._now

    # -- schemas ------------------------------------------------------------------
    def get_schema(self, key: WorkflowKey) -> WorkflowSchema | None:
        return self._t.schemas.get(key)

    def add_schema(self, schema: WorkflowSchema) -> None:
        if schema.key in self._t.schemas:
            return
        self._t.schemas[schema.key] = schema
        self._undo.append(lambda: self._t.schemas.pop(schema.key, None))

    def list_schemas(self) -> list[WorkflowSchema]:
        return [self._t.schemas[key] for key in sorted(self._t.schemas)]

    def schema_versions(self, workflow_id: str) -> list[str]:
        return [version for workflow, version in self._t.schemas if workflow == workflow_id]

    # -- workers ------------------------------------------------------------------
    def add_worker(self, worker: StoredWorker) -> None:
        self._t.workers[worker.worker_id] = _copy(worker)
        self._undo.append(lambda: self._t.workers.pop(worker.worker_id, None))

    def get_worker(self, worker_id: str) -> StoredWorker | None:
        worker = self._t.workers.get(worker_id)
        return None if worker is None else _copy(worker)

    def touch_worker(self, worker_id: str, seen_at: float) -> None:
        worker = self._t.workers.get(worker_id)
        if worker is None:
            return
        before = worker.last_seen_at
        worker.last_seen_at = seen_at
        self._undo.append(lambda: setattr(worker, "last_seen_at", before))

    def list_workers(self) -> list[StoredWorker]:
        workers = sorted(self._t.workers.values(), key=lambda w: (w.registered_at, w.worker_id))
        return [_copy(w) for w in workers]

    # -- runs ---------------------------------------------------------------------
    def add_run(self, run: StoredRun) -> bool:
        key = run.idempotency_key
        if key is not None and key in self._t.run_by_key:
            return False
        run.created_at = self.now()
        run.seq = next(self._t.seq)
        self._t.runs[run.run_id] = _copy(run)
        self._t.steps[run.run_id] = {}
        if key is not None:
            self._t.run_by_key[key] = run.run_id

        def undo() -> None:
            self._t.runs.pop(run.run_id, None)
            self._t.steps.pop(run.run_id, None)
            if key is not None:
                self._t.run_by_key.pop(key, None)

        self._undo.append(undo)
        return True

    def find_run_by_key(self, idempotency_key: str) -> StoredRun | None:
        run_id = self._t.run_by_key.get(idempotency_key)
        return None if run_id is None else self.get_run(run_id)

    def get_run(self, run_id: str, *, lock: bool = False) -> StoredRun | None:
        run = self._t.runs.get(run_id)
        return None if run is None else _copy(run)

    def start_run(self, run_id: str) -> None:
        run = self._t.runs.get(run_id)
        if run is not None and run.status is Status.PENDING:
            started = _copy(run)
            started.status = Status.RUNNING
            self.update_run(started)

    def update_run(self, run: StoredRun) -> None:
        before = self._t.runs.get(run.run_id)
        if before is None:
            return
        self._t.runs[run.run_id] = _copy(run)
        self._undo.append(lambda: self._t.runs.__setitem__(run.run_id, before))

    def list_runs(
        self,
        *,
        workflow_id: str | None,
        status: Status | None,
        limit: int,
        before_seq: int | None,
    ) -> list[StoredRun]:
        # Runs are kept in the order they were added, which is their seq
        # order: walk them newest first and stop at the limit. Waiting for
        # runs to end polls this with a status filter that only the newest
        # of many runs match.
        found: list[StoredRun] = []
        for run in reversed(self._t.runs.values()):
            if (
                (before_seq is None or run.seq < before_seq)
                and (workflow_id is None or run.workflow_id == workflow_id)
                and (status is None or run.status is status)
            ):
                found.append(_copy(run))
                if len(found) == limit:
                    break
        return found

    def delete_finished_runs(self, finished_before: float, limit: int) -> int:
        old = [
            run
            for run in self._t.runs.values()
            if run.finished_at is not None and run.finished_at < finished_before
        ][:limit]
        if old:
            # Runs put back by the undos below land at the end: list_runs
            # relies on seq order, so restore it once they are all back.
            self._undo.append(self._reorder_runs)
        for run in old:
            steps = self._t.steps.pop(run.run_id, {})
            for step in steps.values():
                self._index(step, None)
            del self._t.runs[run.run_id]
            if run.idempotency_key is not None:
                self._t.run_by_key.pop(run.idempotency_key, None)

            def undo(run: StoredRun = run, steps: dict[str, StoredStep] = steps) -> None:
                self._t.runs[run.run_id] = run
                self._t.steps[run.run_id] = steps
                for step in steps.values():
                    self._index(None, step)
                if run.idempotency_key is not None:
                    self._t.run_by_key[run.idempotency_key] = run.run_id

            self._undo.append(undo)
        return len(old)

    def _reorder_runs(self) -> None:
        ordered = sorted(self._t.runs.values(), key=_seq)
        self._t.runs.clear()
        self._t.runs.update((run.run_id, run) for run in ordered)

    # -- steps --------------------------------------------------------------------
    def _index(self, old: StoredStep | None, new: StoredStep | None) -> None:
        """Keep the queue and lease indexes in step with a row's change."""
        if old is not None:
            key = (old.run_id, old.step_name)
            if old.status is Status.PENDING:
                self._t.queued.get((old.workflow_id, old.version), {}).pop(key, None)
            elif old.status is Status.RUNNING:
                self._t.running.pop(key, None)
        if new is not None:
            key = (new.run_id, new.step_name)
            if new.status is Status.PENDING:
                self._t.queued.setdefault((new.workflow_id, new.version), {})[key] = None
            elif new.status is Status.RUNNING:
                self._t.running[key] = new

    def _put(self, step: StoredStep) -> None:
        rows = self._t.steps[step.run_id]
        old = rows.get(step.step_name)
        new = _copy(step)
        rows[step.step_name] = new
        self._index(old, new)

        def undo() -> None:
            self._index(new, old)
            if old is None:
                rows.pop(step.step_name, None)
            else:
                rows[step.step_name] = old

        self._undo.append(undo)
        if new.status is Status.PENDING:
            self._made_ready(new)

    def steps_of(self, run_id: str, *, lock: bool = False) -> list[StoredStep]:
        return [_copy(step) for step in self._t.steps.get(run_id, {}).values()]

    def get_step(self, run_id: str, step_name: str) -> StoredStep | None:
        step = self._t.steps.get(run_id, {}).get(step_name)
        return None if step is None else _copy(step)

    def add_steps(self, steps: Sequence[StoredStep]) -> None:
        for step in steps:
            if step.run_id not in self._t.steps:
                raise LookupError(f"run {step.run_id!r} has no rows to add a step to")
            if step.step_name in self._t.steps[step.run_id]:
                raise ValueError(
                    f"step {step.step_name!r} of run {step.run_id!r} already has a row"
                )
            self._put(step)

    def update_step(self, step: StoredStep) -> None:
        if step.step_name in self._t.steps.get(step.run_id, {}):
            self._put(step)

    def claim_steps(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        tokens: Callable[[], str],
    ) -> list[StoredStep]:
        now = self.now()
        claimed: list[StoredStep] = []
        while len(claimed) < limit:
            oldest: StoredStep | None = None
            for key in workflows:
                queue = self._t.queued.get(key)
                if not queue:
                    continue
                run_id, name = next(iter(queue))
                head = self._t.steps[run_id][name]
                if oldest is None or head.ready_at < oldest.ready_at:
                    oldest = head
            if oldest is None:
                break
            step = _copy(oldest)
            step.status = Status.RUNNING
            step.attempt += 1
            step.worker_id = worker_id
            step.lease_token = tokens()
            step.deadline = now + step.lease_seconds
            step.started_at = now
            self._put(step)
            claimed.append(_copy(step))
        self._took(claimed)
        return claimed

    def leases_of(self, worker_id: str) -> tuple[list[StoredStep], set[str]]:
        steps = [_copy(s) for s in self._t.running.values() if s.worker_id == worker_id]
        cancelled = {
            step.run_id
            for step in steps
            if (run := self._t.runs.get(step.run_id)) is not None and run.cancel_requested
        }
        return steps, cancelled

    def extend_lease(self, step: StoredStep, deadline: float) -> bool:
        current = self._t.running.get((step.run_id, step.step_name))
        if current is None or current.lease_token != step.lease_token:
            return False
        before = current.deadline
        current.deadline = deadline
        self._undo.append(lambda: setattr(current, "deadline", before))
        return True

    def expired_steps(self, limit: int) -> list[tuple[str, str]]:
        now = self.now()
        expired = [
            s for s in self._t.running.values() if s.deadline is not None and s.deadline < now
        ]
        expired.sort(key=lambda s: s.deadline or 0.0)
        return [(s.run_id, s.step_name) for s in expired[:limit]]

    def results_of(self, run_id: str, step_names: Sequence[str]) -> dict[str, Any]:
        rows = self._t.steps.get(run_id, {})
        return {
            name: rows[name].result
            for name in step_names
            if name in rows and rows[name].status is Status.SUCCEEDED
        }

    # -- wake-ups -----------------------------------------------------------------
    def notify_work(self) -> None:
        self._wake_anyway = True
        self.work_changed = True

    def notify_runs(self) -> None:
        self.runs_changed = True


class MemoryStorage(RuntimeStorage):
    """State in this process's memory: for tests, notebooks and single-process demos.

    Nothing survives the process, and only its threads can use it.
    Transactions take turns and roll back completely when they raise.
    """

    description = "memory (this process only; lost on exit)"

    def __init__(self) -> None:
        super().__init__()
        # Nothing outside this process changes the state: wake-ups come from
        # the signals, and waiters look again only to catch expiring leases.
        self.poll_interval = 0.5
        self._lock = threading.Lock()
        self._tables = _Tables()

    def atomic(self, body: Callable[[StorageTransaction], T], *, write: bool = True) -> T:
        """Run ``body`` alone; undo all it wrote if it raises."""
        with self._lock:
            transaction = _MemoryTransaction(self._tables)
            try:
                result = body(transaction)
            except BaseException:
                transaction.rollback()
                raise
            transaction.settle_wakeups()
        self._committed(transaction)
        return result
