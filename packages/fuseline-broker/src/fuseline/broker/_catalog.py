"""What a broker object remembers between calls, and the claims that use it.

Only what never changes once stored is remembered: a schema under its key
(as the ``RunGraph`` the rules work on) and the workflows a worker
registered. So any number of broker processes can share one database, each
with its own catalog. Claims live here because they need both.
"""

from __future__ import annotations

import secrets
import time

from fuseline.broker._records import assignment
from fuseline.errors import RunNotFoundError, WorkerNotFoundError, WorkflowNotFoundError
from fuseline.messages import StepAssignment
from fuseline.status import Status
from fuseline.storage import StorageTransaction, WorkflowKey
from fuseline.workflow import WorkflowSchema
from fuseline.workflow.rules import RunGraph

__all__ = ["Catalog", "claim_steps"]

# A worker's last_seen_at is written at most this often by claims.
_TOUCH_EVERY = 2.0


def _lease_token() -> str:
    return secrets.token_urlsafe(24)


class Catalog:
    """Schemas and workers this broker object has already read or stored."""

    def __init__(self) -> None:
        self._graphs: dict[WorkflowKey, RunGraph] = {}
        self._worker_workflows: dict[str, list[WorkflowKey]] = {}
        self._touched: dict[str, float] = {}

    def store(self, t: StorageTransaction, schema: WorkflowSchema) -> RunGraph:
        """Store ``schema`` unless stored; refuse one that differs under the same key."""
        known = self._graphs.get(schema.key)
        if known is not None and known.schema == schema:
            return known  # stored schemas never change, so equal means stored
        stored = t.get_schema(schema.key)
        if stored is None:
            t.add_schema(schema)
            # Another process may have stored the same key a moment ago.
            stored = t.get_schema(schema.key) or schema
            stored.ensure_compatible_with(schema)
            # Not cached yet: this transaction may still roll back, and a
            # cached schema is taken as stored.
            return RunGraph(stored)
        stored.ensure_compatible_with(schema)
        return self._graphs.setdefault(schema.key, RunGraph(stored))

    def graph(self, t: StorageTransaction, key: WorkflowKey) -> RunGraph:
        """The stored schema under ``key``.

        Raises:
            WorkflowNotFoundError: Nothing is stored under ``key``.
        """
        graph = self._graphs.get(key)
        if graph is None:
            schema = t.get_schema(key)
            if schema is None:
                raise WorkflowNotFoundError(
                    f"No workflow {key[0]!r} version {key[1]!r} is registered.",
                    details={"workflow_id": key[0], "version": key[1]},
                )
            graph = self._graphs.setdefault(key, RunGraph(schema))
        return graph

    def workflows_of(self, t: StorageTransaction, worker_id: str) -> list[WorkflowKey]:
        """The workflow versions ``worker_id`` registered.

        Raises:
            WorkerNotFoundError: No such worker.
        """
        workflows = self._worker_workflows.get(worker_id)
        if workflows is None:
            worker = t.get_worker(worker_id)
            if worker is None:
                raise WorkerNotFoundError(
                    f"No worker {worker_id!r} is registered; register the worker again.",
                    details={"worker_id": worker_id},
                )
            workflows = self._worker_workflows.setdefault(worker_id, worker.workflows)
        return workflows

    def touch(self, t: StorageTransaction, worker_id: str, *, always: bool = False) -> None:
        """Note the worker as seen now, unless this object did so a moment ago."""
        now = time.monotonic()
        if always or now - self._touched.get(worker_id, 0.0) >= _TOUCH_EVERY:
            t.touch_worker(worker_id, t.now())
            self._touched[worker_id] = now


def claim_steps(
    t: StorageTransaction, catalog: Catalog, worker_id: str, limit: int
) -> list[StepAssignment]:
    """Lease up to ``limit`` ready steps of the worker's workflows to it."""
    workflows = catalog.workflows_of(t, worker_id)
    catalog.touch(t, worker_id)
    rows = t.claim_steps(worker_id, workflows, limit, _lease_token)
    if not rows:
        return []
    # Sorted: claims that start the same runs lock them in the same order.
    run_ids = sorted({row.run_id for row in rows})
    runs = t.runs_by_id(run_ids)
    if len(runs) != len(run_ids):  # pragma: no cover - a step row never outlives its run
        raise RunNotFoundError(f"Runs {sorted(set(run_ids) - set(runs))!r} vanished.")
    # The first hand-out starts a run. A conditional update, so a cancel
    # committed meanwhile is never overwritten.
    t.start_runs([run_id for run_id in run_ids if runs[run_id].status is Status.PENDING])
    wanted = []
    for row in rows:
        graph = catalog.graph(t, (row.workflow_id, row.version))
        wanted.append((row.run_id, graph.result_sources(row.step_name, row.or_winners)))
    results = t.results_for(wanted)
    return [
        assignment(row, runs[row.run_id], found) for row, found in zip(rows, results, strict=True)
    ]
