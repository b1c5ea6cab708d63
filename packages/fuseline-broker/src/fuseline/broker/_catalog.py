"""What a broker object remembers between calls, and the claims that use it.

Only what never changes once stored is remembered: a schema under its key
(as the ``RunGraph`` the rules work on) and the workflows a worker
registered. So any number of broker processes can share one database, each
with its own catalog. Claims live here because they need both.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from fuseline.broker._records import assignment
from fuseline.broker._reports import Known
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

    def was_stored(self, graph: RunGraph) -> bool:
        """Whether ``graph`` came from storage, rather than from :meth:`store` writing it now."""
        return self._graphs.get(graph.schema.key) is graph

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

    def known_workflows(self, worker_id: str) -> list[WorkflowKey]:
        """The workflow versions of ``worker_id`` if this object has read them, else none."""
        return self._worker_workflows.get(worker_id, [])

    def touch(self, t: StorageTransaction, worker_id: str, *, always: bool = False) -> None:
        """Note the worker as seen now, unless this object did so a moment ago."""
        now = time.monotonic()
        if always or now - self._touched.get(worker_id, 0.0) >= _TOUCH_EVERY:
            t.touch_worker(worker_id, t.now())
            self._touched[worker_id] = now


def claim_steps(
    t: StorageTransaction,
    catalog: Catalog,
    worker_id: str,
    limit: int,
    known: Mapping[str, Known] | None = None,
) -> list[StepAssignment]:
    """Lease up to ``limit`` ready steps of the worker's workflows to it.

    The claim is the transaction's last write (a backend may commit with
    it), so callers call this last. ``known`` holds runs this transaction
    locked and read with all their rows (a report's run): a step claimed
    from one of them takes its run's inputs and its predecessors' results
    from there instead of reading them again.
    """
    workflows = catalog.workflows_of(t, worker_id)
    known = known or {}
    # Before the claim, since no write may follow it. (A transaction that
    # has not read the clock yet reads it for this, every few seconds.)
    catalog.touch(t, worker_id)
    # The first hand-out starts a run (runs the caller locked are started).
    rows, runs = t.claim_steps_with_runs(
        worker_id, workflows, limit, _lease_token, known=known.keys(), start=True, last=True
    )
    if not rows:
        return []
    # A run this transaction locked and read is the current one.
    runs.update((run_id, entry[0]) for run_id, entry in known.items() if entry[0] is not None)
    missing = {row.run_id for row in rows} - runs.keys()
    if missing:  # pragma: no cover - a step row never outlives its run
        raise RunNotFoundError(f"Runs {sorted(missing)!r} vanished.")
    # Results of finished steps never change: reading them after the commit
    # reads what was there at the claim.
    wanted: list[tuple[str, list[str]]] = []
    results: dict[int, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        graph = catalog.graph(t, (row.workflow_id, row.version))
        sources = graph.result_sources(row.step_name, row.or_winners)
        entry = known.get(row.run_id)
        if entry is None:
            wanted.append((row.run_id, sources))
        else:
            # The run is locked, so its finished steps cannot change under us.
            steps = entry[1]
            results[index] = {
                name: steps[name].result
                for name in sources
                if name in steps and steps[name].status is Status.SUCCEEDED
            }
    read = iter(t.results_for(wanted))
    return [
        assignment(row, runs[row.run_id], results[i] if i in results else next(read))
        for i, row in enumerate(rows)
    ]
