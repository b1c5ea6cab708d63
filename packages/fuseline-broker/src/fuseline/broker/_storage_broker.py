"""``StorageBroker``: the one broker implementation, over any ``RuntimeStorage``.

It orchestrates: it validates what it is given, opens a transaction, lets
:mod:`fuseline.workflow.rules` decide what follows from a step's outcome, and
writes the consequences through the storage. Everything a call changes
commits together, so a report, its result, the successors it makes ready and
the run's new status are never seen apart. The broker keeps no run state of
its own; its caches hold only what never changes once stored (schemas, the
workflows a worker registered), so any number of broker processes can share
one database.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import threading
import time
import uuid
import weakref
from typing import Any

from fuseline.broker._base import Broker
from fuseline.broker._catalog import Catalog, claim_steps
from fuseline.broker._finished import FinishedRuns
from fuseline.broker._handoff import Waiter, Waiters
from fuseline.broker._leases import extend_leases
from fuseline.broker._records import run_details, run_summary, worker_info
from fuseline.broker._reports import CheckedReport, Known, apply_report, check_report
from fuseline.broker._sightings import Sightings
from fuseline.broker._transitions import RunTransitions
from fuseline.broker._validation import as_schema, json_payload
from fuseline.errors import (
    BrokerUnavailableError,
    FuselineError,
    IdempotencyConflictError,
    InvalidInputError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
    WorkerNotFoundError,
    WorkflowNotFoundError,
)
from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    ReportOutcome,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.storage import (
    RuntimeStorage,
    StorageTransaction,
    StoredRun,
)
from fuseline.workflow import WorkflowSchema, rules
from fuseline.workflow.versions import find_workflow, latest_version

__all__ = ["StorageBroker"]

log = logging.getLogger("fuseline.broker")

_MAX_PAGE = 1000
_REAP_BATCH = 100
# Without a sweeper, claims look for expired leases at most this often (per
# broker object); with one, only when it missed two of its rounds.
_REAP_EVERY = 0.2


class StorageBroker(Broker):
    """A broker whose whole state lives in a :class:`~fuseline.storage.RuntimeStorage`.

    Args:
        storage: Where schemas, workers, runs and steps are kept.
        default_lease: Seconds a worker holds a step without a heartbeat, for
            steps without a ``StepTimeoutPolicy`` (a step's timeout is its lease).
        default_max_attempts: How many times a step without a ``RetryPolicy``
            is handed out before an expired lease fails it. Steps with a
            ``RetryPolicy`` get ``max_retries + 1`` hand-outs.
        max_result_bytes: Largest accepted result (and set of run inputs), as
            compact JSON; None for no limit.
        retention: Seconds after which finished runs are deleted by the
            background sweeper; None keeps them forever.
        sweep_interval: Seconds between background sweeps for expired leases
            (and old runs); 0 turns the sweeper off.
    """

    def __init__(
        self,
        storage: RuntimeStorage,
        *,
        default_lease: float = 30.0,
        default_max_attempts: int = 3,
        max_result_bytes: int | None = None,
        retention: float | None = None,
        sweep_interval: float = 1.0,
    ) -> None:
        if not 0 < default_lease < math.inf:
            raise InvalidInputError("default_lease must be a positive, finite number of seconds.")
        if default_max_attempts < 1:
            raise InvalidInputError("default_max_attempts must be at least 1.")
        self.storage = storage
        self.default_lease = default_lease
        self.default_max_attempts = default_max_attempts
        self.max_result_bytes = max_result_bytes
        self.retention = retention
        self._finished = FinishedRuns()
        self._runs = RunTransitions(default_lease, default_max_attempts, self._finished.add)
        self._catalog = Catalog()
        self._waiters = Waiters()
        # Workers whose last claim found nothing, and runs dispatched here
        # that had not finished: answers that hold until a hint comes.
        self._empty = Sightings()
        self._unfinished = Sightings()
        self._last_reap = 0.0
        # Claims and waits look for expired leases too, but leave it to the
        # sweeper while it keeps up: each look is a transaction.
        self._reap_every = max(_REAP_EVERY, 2 * sweep_interval)
        # After an outage of the storage, leases that ran out while it was
        # away get one more lease before they count as lost (see expire_leases).
        self._storage_lost = False
        self._storage_back_at: float | None = None
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None
        if sweep_interval > 0:
            self._sweeper = threading.Thread(
                target=_sweep,
                args=(weakref.ref(self), self._closed, sweep_interval),
                name="fuseline-sweeper",
                daemon=True,
            )
            self._sweeper.start()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage.description})"

    # -- schemas ------------------------------------------------------------------
    # -- worker-facing --------------------------------------------------------------
    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        """Store the schemas the worker runs and return its new, never reused id.

        Raises:
            SchemaConflictError: A schema's id and version is stored with a
                different graph; bump the workflow's version.
        """
        schemas = [as_schema(w) for w in workflows]
        if name is not None and not 0 < len(name) <= 200:
            raise InvalidInputError("A worker name must be 1 to 200 characters long.")
        worker_id = f"w-{uuid.uuid4().hex}"

        def body(t: StorageTransaction) -> None:
            from fuseline.storage import StoredWorker

            for schema in schemas:
                self._catalog.store(t, schema)
            now = t.now()
            keys = list(dict.fromkeys(schema.key for schema in schemas))
            t.add_worker(StoredWorker(worker_id, name, keys, now, now))

        self.storage.atomic(body)
        return worker_id

    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Create a run, enqueue its first steps and return the run id.

        With ``idempotency_key``, a second dispatch with the same key and the
        same request returns the first run's id instead of creating another.

        Raises:
            IdempotencyConflictError: The key was used for a different request.
            SchemaConflictError: The schema's key is stored with another graph.
        """
        schema = as_schema(workflow)
        plain = json_payload(inputs or {}, "run inputs", self.max_result_bytes)
        if not isinstance(plain, dict):
            raise InvalidInputError("Run inputs must be a JSON object of name: value pairs.")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise InvalidInputError("An idempotency key must be 1 to 200 characters long.")
        fingerprint = hashlib.sha256(
            json.dumps([schema.key, plain], sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        run_id = uuid.uuid4().hex

        def same_request(existing: StoredRun) -> str:
            if existing.request_hash != fingerprint:
                raise IdempotencyConflictError(
                    f"Idempotency key {idempotency_key!r} was already used for a different "
                    "dispatch; use a new key for a new request.",
                    details={"run_id": existing.run_id},
                )
            return existing.run_id

        # A worker of this process waiting for this workflow gets the new step
        # in this very transaction (see _handoff.py). Taken before the
        # transaction, so that a retried attempt claims for the same waiter.
        waiter = self._waiters.take(schema.key)
        handed: list[StepAssignment] = []

        def body(t: StorageTransaction) -> str:
            handed.clear()
            graph = self._catalog.store(t, schema)
            run = StoredRun(
                run_id=run_id,
                workflow_id=schema.workflow_id,
                version=schema.version,
                inputs=plain,
                status=Status.PENDING,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
            )
            # The first steps' times are the run's, which the storage sets.
            first = self._runs.rows_for(graph, run, rules.start(graph), 0.0)
            if waiter is None:
                # Nothing follows the run, and when the schema was stored
                # before, nothing came before it either: the storage may
                # commit with it (a refused repeat then wrote nothing).
                last = self._catalog.was_stored(graph)
                stored = t.add_run_with_steps(run, first, last=last)
            else:
                # The claim need not know whether the run was stored (a
                # repeat's waiter gets whatever else is ready), so the storage
                # may send the two together, in one round trip.
                stored_later = t.add_run_with_steps_later(run, first)
                handed.extend(self._claim_for(t, waiter))
                stored = stored_later()
            if not stored:
                raced = t.find_run_by_key(idempotency_key or "")
                if raced is None:  # pragma: no cover - only the key can collide
                    raise IdempotencyConflictError("The run could not be stored; try again.")
                return same_request(raced)
            return run_id

        since = self.storage.runs.generation
        looked_at = time.monotonic()
        if waiter is None:
            dispatched = self.storage.atomic(body)
        else:
            committed = False
            try:
                dispatched = self.storage.atomic(body)
                committed = True
            finally:
                # Always answer the waiter, with nothing when the dispatch failed:
                # it then goes on waiting as if it had never been taken.
                waiter.deliver(handed if committed else [])
                self.storage.work.poke()
        if dispatched == run_id:  # a new run, not one found by its idempotency key
            self._unfinished.saw(run_id, since, looked_at + self.storage.poll_interval)
        return dispatched

    def _claim_for(self, t: StorageTransaction, waiter: Waiter) -> list[StepAssignment]:
        """Lease ready steps to a waiting worker inside another call's transaction."""
        try:
            return claim_steps(t, self._catalog, waiter.worker_id, waiter.limit)
        except WorkerNotFoundError:
            return []  # the worker is gone; its long poll will say so itself

    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        """Hand the worker its next ready step, waiting up to ``wait`` seconds for one."""
        found = self.get_steps(worker_id, max_steps=1, wait=wait)
        return found[0] if found else None

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        """Claim up to ``max_steps`` ready steps of the worker's workflows, oldest first.

        When none is ready, wait up to ``wait`` seconds for one (a long poll).

        Raises:
            WorkerNotFoundError: The worker id is unknown.
        """
        if not 1 <= max_steps <= _MAX_PAGE:
            raise InvalidInputError(f"max_steps must be between 1 and {_MAX_PAGE}.")
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            self._reap_if_due()
            since = self.storage.work.generation
            looked_at = time.monotonic()
            # A long poll right after one that found nothing, with no hint
            # since, would find nothing either: it goes on waiting instead.
            empty_until = self._empty.still_holds(worker_id, since, looked_at) if wait > 0 else None
            if empty_until is None:
                found = self.storage.atomic(
                    lambda t: claim_steps(t, self._catalog, worker_id, max_steps)
                )
                if found:
                    self._empty.forget(worker_id)
                    return found
                empty_until = looked_at + self.storage.poll_interval
                self._empty.saw(worker_id, since, empty_until)
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return []
            waiter = Waiter(worker_id, self._catalog.known_workflows(worker_id), max_steps)
            self._waiters.add(waiter)
            try:
                hinted = self.storage.work.wait(
                    since, min(remaining, max(empty_until - now, 0.0)), until=waiter.is_delivered
                )
            finally:
                taken = not self._waiters.withdraw(waiter)
            if taken:
                # A dispatch is claiming for this poll: wait for what it gets,
                # even if the time is up meanwhile.
                handed = waiter.wait_delivered()
                if handed:
                    return handed
                # That dispatch failed: look at the storage again.
                self._empty.forget(worker_id)
                hinted = True
            if not hinted and time.monotonic() >= deadline:
                # Nothing was made ready since the last look: looking again
                # would only cost a transaction (the HTTP server asks again every second).
                return []

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        """Accept a step's outcome, enqueue what it makes ready and update the run.

        The report must come from the worker holding the step's live lease
        (with its ``lease_token``, when given). Repeating an accepted report
        exactly is answered as if it were the first; anything else about a
        step the worker does not hold is a conflict and changes nothing.

        Args:
            worker_id: The reporting worker.
            report: The outcome.
            claim_next: Also claim the worker's next ready step, in the same
                transaction, and return it. Left out when the report made
                nothing ready and the worker's last claim found nothing, with
                no hint of new work since (such a claim would find nothing).

        Raises:
            LeaseConflictError: The worker does not hold a live lease on the step.
            RunNotFoundError, StepNotFoundError, WorkerNotFoundError: Unknown ids.
        """
        checked = check_report(report, self.max_result_bytes)
        since = self.storage.work.generation

        def body(t: StorageTransaction) -> StepAssignment | None:
            self._catalog.workflows_of(t, worker_id)
            known: dict[str, Known] = {}
            if not self._apply_report(t, worker_id, checked, known):
                # A repeat of the accepted report (a retry after a lost answer):
                # answer it, and change nothing, not even by claiming a step.
                return None
            if not claim_next or self._nothing_to_claim(t, worker_id, since):
                return None
            found = claim_steps(t, self._catalog, worker_id, 1, known)
            return found[0] if found else None

        return self.storage.atomic(body)

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        """Accept several reports in one transaction, and claim up to ``claim`` steps with them.

        Each report is judged as :meth:`report_step` judges it, but a refused
        report does not refuse the others: its outcome carries the error
        instead. Reports are applied in the order of their runs' ids (so that
        batches lock runs in one order), and the outcomes come back in the
        order the reports were given. The claim is left out as
        :meth:`report_step` leaves it out.

        Raises:
            InvalidInputError: No reports, more than the page limit, or ``claim`` out of range.
            WorkerNotFoundError: The worker id is unknown.
        """
        if not 1 <= len(reports) <= _MAX_PAGE:
            raise InvalidInputError(f"A batch holds 1 to {_MAX_PAGE} reports, not {len(reports)}.")
        if not 0 <= claim <= _MAX_PAGE:
            raise InvalidInputError(f"claim must be between 0 and {_MAX_PAGE}.")
        outcomes: list[ReportOutcome | None] = [None] * len(reports)
        checked: list[tuple[int, CheckedReport]] = []
        for index, report in enumerate(reports):
            try:
                checked.append((index, check_report(report, self.max_result_bytes)))
            except FuselineError as exc:
                outcomes[index] = ReportOutcome.refused(report, exc)
        checked.sort(key=lambda item: item[1].report.instance_id)
        since = self.storage.work.generation

        def body(t: StorageTransaction) -> ReportBatchReply:
            self._catalog.workflows_of(t, worker_id)
            done = list(outcomes)
            recorded = False
            known = self._read_ahead(t, sorted({one.report.instance_id for _, one in checked}))
            for index, one in checked:
                try:
                    recorded |= self._apply_report(t, worker_id, one, known)
                except FuselineError as exc:
                    done[index] = ReportOutcome.refused(one.report, exc)
                else:
                    done[index] = ReportOutcome.accepted_for(one.report)
            # As with one report: a batch that only repeats accepted reports
            # changes nothing, not even by claiming.
            wanted = claim > 0 and recorded and not self._nothing_to_claim(t, worker_id, since)
            found = claim_steps(t, self._catalog, worker_id, claim, known) if wanted else []
            return ReportBatchReply(
                outcomes=[outcome for outcome in done if outcome is not None], assignments=found
            )

        return self.storage.atomic(body)

    def _nothing_to_claim(self, t: StorageTransaction, worker_id: str, since: int) -> bool:
        """Whether a claim for ``worker_id`` at this point of ``t`` would surely find nothing.

        It would when ``t`` made no step ready and the worker's last claim
        found nothing, with no hint of new work since (``since`` is the
        hints' generation read before ``t`` began): the claim's statement
        can then be left out. Work whose hint comes later wakes the worker's
        waiting poll, as it would have anyway.
        """
        if t.work_changed:
            return False
        return self._empty.still_holds(worker_id, since, time.monotonic()) is not None

    @staticmethod
    def _read_ahead(t: StorageTransaction, run_ids: list[str]) -> dict[str, Known]:
        """Lock and read several runs and their rows at once (a single report reads its own)."""
        if len(run_ids) < 2:
            return {}
        runs, rows = t.runs_with_steps(run_ids, lock=True)
        return {
            run_id: (runs.get(run_id), {row.step_name: row for row in rows.get(run_id, [])})
            for run_id in run_ids
        }

    def _apply_report(
        self,
        t: StorageTransaction,
        worker_id: str,
        checked: CheckedReport,
        known: dict[str, Known],
    ) -> bool:
        return apply_report(
            t,
            worker_id,
            checked,
            graph_of=self._catalog.graph,
            runs=self._runs,
            reachable_for=self._reachable_for(),
            known=known,
        )

    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        """Extend the worker's live leases (all of them, or the ones named).

        The reply lists the leases extended, those the worker no longer holds
        (lost: stop working on them and do not report) and those whose run was
        cancelled.

        Raises:
            WorkerNotFoundError: The worker id is unknown.
        """

        def body(t: StorageTransaction) -> KeepAliveReply:
            self._catalog.workflows_of(t, worker_id)
            # Read first: the clock comes with the leases, and the write
            # noting the worker as seen can then wait for the extension.
            leases = t.leases_of(worker_id)
            self._catalog.touch(t, worker_id, always=True)
            return extend_leases(t, leases, lease_tokens, self._reachable_for())

        return self.storage.atomic(body)

    # -- run API --------------------------------------------------------------------
    def _read_run(self, t: StorageTransaction, run_id: str, *, lock: bool = False) -> StoredRun:
        run = t.get_run(run_id, lock=lock)
        if run is None:
            raise _no_run(run_id)
        return run

    def get_run(self, run_id: str) -> RunDetails:
        """The run with every step's state and, once finished, its result."""

        def body(t: StorageTransaction) -> RunDetails:
            runs, steps = t.runs_with_steps([run_id])
            run = runs.get(run_id)
            if run is None:
                raise _no_run(run_id)
            graph = self._catalog.graph(t, (run.workflow_id, run.version))
            return run_details(graph, run, steps[run_id])

        return self.storage.atomic(body, write=False)

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Block until the run is finished and return it.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        details, read_late = self._await_run(run_id, timeout)
        if details is not None:
            return details
        # A last look, unless the run was just read with the time up (a
        # wait of 0 s reads the run once).
        details = read_late or self.get_run(run_id)
        if details.status.is_terminal:
            return details
        raise WaitTimeoutError(
            f"Run {run_id!r} is still {details.status.value} after {timeout:g} s.",
            details={"run_id": run_id, "status": details.status.value},
        )

    def await_run(self, run_id: str, timeout: float | None = None) -> RunDetails | None:
        """The run once it is finished, or None when ``timeout`` seconds passed first.

        Unlike :meth:`wait_for_run` it reads nothing when the time is up, and
        a run it read unfinished is not read again while no run ended since
        and for one poll interval, so that a long wait made of many short
        ones (the HTTP server's slices) reads the run once per poll interval.

        Raises:
            RunNotFoundError: No such run.
        """
        return self._await_run(run_id, timeout)[0]

    def _await_run(
        self, run_id: str, timeout: float | None
    ) -> tuple[RunDetails | None, RunDetails | None]:
        """:meth:`await_run`, and the unfinished run when it was read with the time up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            since = self.storage.runs.generation
            details = self._finished.get(run_id)
            if details is not None:
                return details, None
            now = time.monotonic()
            # A run dispatched here, or read unfinished, that no commit can
            # have ended since: no need to read it before waiting.
            unfinished_until = self._unfinished.still_holds(run_id, since, now)
            if unfinished_until is None:
                details = self.get_run(run_id)
                if details.status.is_terminal:
                    return details, None
                unfinished_until = now + self.storage.poll_interval
                self._unfinished.saw(run_id, since, unfinished_until)
            remaining = 3600.0 if deadline is None else deadline - now
            if remaining <= 0:
                # Read after ``now``, so after the deadline, when read at all.
                return None, details
            self._reap_if_due()
            hinted = self.storage.runs.wait(since, min(remaining, max(unfinished_until - now, 0.0)))
            # Unless a run finished meanwhile, a last look at the deadline
            # would only cost a transaction.
            if not hinted and deadline is not None and time.monotonic() >= deadline:
                return None, None

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first; pass the page's ``next_cursor`` to get the next one."""
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {_MAX_PAGE}.")
        before: int | None = None
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 19:
                raise InvalidInputError(
                    "The cursor is not one this broker handed out; pass a page's next_cursor."
                )
            before = int(cursor)
        rows = self.storage.atomic(
            lambda t: t.list_runs(
                workflow_id=workflow_id, status=status, limit=limit + 1, before_seq=before
            ),
            write=False,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return RunPage(
            items=[run_summary(run) for run in rows],
            next_cursor=str(rows[-1].seq) if more else None,
        )

    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel the run: pending steps at once, running ones when they next hear from us.

        Raises:
            RunFinishedError: The run had already finished.
        """

        def body(t: StorageTransaction) -> RunDetails:
            run = self._read_run(t, run_id, lock=True)
            if run.status.is_terminal:
                raise RunFinishedError(
                    f"Run {run_id!r} already finished as {run.status.value}; nothing to cancel.",
                    details={"run_id": run_id, "status": run.status.value},
                )
            graph = self._catalog.graph(t, (run.workflow_id, run.version))
            return run_details(graph, run, self._runs.cancel(t, graph, run))

        return self.storage.atomic(body)

    def list_workflows(self) -> list[WorkflowSchema]:
        """Every stored schema, by workflow id and version."""
        return self.storage.atomic(lambda t: t.list_schemas(), write=False)

    def find_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowSchema:
        """The stored schema of ``workflow_id`` at ``version`` (the latest when None).

        Reads only that workflow's versions, and the schema itself only once
        per broker object.

        Raises:
            WorkflowNotFoundError: No such schema is stored.
        """

        def body(t: StorageTransaction) -> WorkflowSchema:
            chosen = version
            if chosen is None:
                chosen = latest_version(t.schema_versions(workflow_id))
            if chosen is not None:
                with contextlib.suppress(WorkflowNotFoundError):
                    return self._catalog.graph(t, (workflow_id, chosen)).schema
            # Not stored: the same error as picking from the full list.
            return find_workflow([], workflow_id, version)

        return self.storage.atomic(body, write=False)

    def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker, oldest first."""
        workers = self.storage.atomic(lambda t: t.list_workers(), write=False)
        return [worker_info(worker) for worker in workers]

    # -- housekeeping ---------------------------------------------------------------
    def expire_leases(self) -> int:
        """Hand out again (or fail) every step whose lease ran out; return how many.

        A background thread calls this every ``sweep_interval`` seconds and
        claims call it too, so callers rarely need to. When the storage was
        unreachable at an earlier call, a step whose lease ran out is left
        alone until the storage has been back for that step's lease length:
        its worker could not heartbeat during the outage and deserves the
        chance to before another worker runs the step again.
        """
        self._last_reap = time.monotonic()
        self._empty.forget_older(self._last_reap)
        self._unfinished.forget_older(self._last_reap)
        try:
            expired = self.storage.atomic(lambda t: t.expired_steps(_REAP_BATCH), write=False)
        except BrokerUnavailableError:
            self._storage_lost = True
            raise
        if self._storage_lost:
            self._storage_lost = False
            self._storage_back_at = time.monotonic()
        reachable_for = self._reachable_for()
        by_run: dict[str, list[str]] = {}
        for run_id, step_name in expired:
            by_run.setdefault(run_id, []).append(step_name)
        handled = 0
        for run_id, names in by_run.items():
            handled += self.storage.atomic(
                functools.partial(
                    self._expire, run_id=run_id, names=names, reachable_for=reachable_for
                )
            )
        return handled

    def _reachable_for(self) -> float | None:
        """Seconds since the storage came back after an outage this broker saw, if any."""
        back = self._storage_back_at
        return None if back is None else time.monotonic() - back

    def _reap_if_due(self) -> None:
        if time.monotonic() - self._last_reap >= self._reap_every:
            self.expire_leases()

    def _expire(
        self,
        t: StorageTransaction,
        *,
        run_id: str,
        names: list[str],
        reachable_for: float | None,
    ) -> int:
        run = t.get_run(run_id, lock=True)
        if run is None:
            return 0
        graph = self._catalog.graph(t, (run.workflow_id, run.version))
        return self._runs.expire(t, graph, run, names, reachable_for)

    def prune_runs(self, older_than: float) -> int:
        """Delete runs that finished more than ``older_than`` seconds ago; return how many."""
        deleted = 0
        while True:
            count = self.storage.atomic(lambda t: t.delete_finished_runs(t.now() - older_than, 500))
            if count:
                self._finished.clear()
            deleted += count
            if count < 500:
                return deleted

    def close(self) -> None:
        """Stop the sweeper and release the storage."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sweeper is not None and self._sweeper is not threading.current_thread():
            self._sweeper.join(timeout=5)
        self.storage.close()


def _no_run(run_id: str) -> RunNotFoundError:
    return RunNotFoundError(f"No run {run_id!r} exists.", details={"run_id": run_id})


def _sweep(ref: weakref.ref[StorageBroker], closed: threading.Event, interval: float) -> None:
    """The sweeper thread: expire leases, prune old runs; ends with its broker."""
    last_prune = 0.0
    while not closed.wait(interval):
        broker = ref()
        if broker is None:
            return
        try:
            broker.expire_leases()
            if broker.retention is not None and time.monotonic() - last_prune > 60:
                last_prune = time.monotonic()
                broker.prune_runs(broker.retention)
        except Exception as exc:
            log.debug("sweep failed: %s: %s", type(exc).__name__, exc)
        del broker
