"""How stored rows become the models that brokers hand out: pure conversions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fuseline.messages import (
    RunDetails,
    RunSummary,
    StepAssignment,
    StepError,
    StepRecord,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.storage import StoredRun, StoredStep, StoredWorker
from fuseline.workflow.rules import RunGraph, StepFacts

__all__ = ["assignment", "facts", "run_details", "run_summary", "to_time", "worker_info"]


def to_time(value: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (None stays None)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _required_time(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def facts(rows: Iterable[StoredStep]) -> dict[str, StepFacts]:
    """What the execution rules need to know of each step row."""
    return {
        row.step_name: StepFacts(
            row.status,
            row.branch,
            queued=row.status is Status.PENDING,
            order=row.finish_order,
        )
        for row in rows
    }


def run_summary(run: StoredRun) -> RunSummary:
    """The run without its steps."""
    return RunSummary(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.version,
        status=run.status,
        created_at=_required_time(run.created_at),
        finished_at=to_time(run.finished_at),
        cancel_requested=run.cancel_requested,
    )


def run_details(graph: RunGraph, run: StoredRun, rows: Iterable[StoredStep]) -> RunDetails:
    """The run with a record for every step of its graph (PENDING where no row exists yet)."""
    by_name = {row.step_name: row for row in rows}
    steps: dict[str, StepRecord] = {}
    for name in graph.step_names:
        row = by_name.get(name)
        if row is None:
            steps[name] = StepRecord(name=name)
            continue
        steps[name] = StepRecord(
            name=name,
            status=row.status,
            result=row.result,
            error=None if row.error is None else StepError.model_validate(row.error),
            attempts=row.attempt,
            worker_id=row.worker_id,
            started_at=to_time(row.started_at),
            finished_at=to_time(row.finished_at),
        )
    return RunDetails(
        **run_summary(run).model_dump(),
        inputs=run.inputs,
        steps=steps,
        result=run.result,
    )


def worker_info(worker: StoredWorker) -> WorkerInfo:
    """A registered worker as the run API shows it."""
    return WorkerInfo(
        worker_id=worker.worker_id,
        name=worker.name,
        workflows=list(worker.workflows),
        registered_at=_required_time(worker.registered_at),
        last_seen_at=_required_time(worker.last_seen_at),
    )


def assignment(row: StoredStep, run: StoredRun, results: Mapping[str, Any]) -> StepAssignment:
    """A claimed step row as the worker receives it."""
    return StepAssignment(
        workflow_id=row.workflow_id,
        workflow_version=row.version,
        instance_id=row.run_id,
        step_name=row.step_name,
        payload={"workflow_inputs": run.inputs, "results": dict(results)},
        attempt=row.attempt,
        lease_token=row.lease_token,
        deadline=to_time(row.deadline),
    )
