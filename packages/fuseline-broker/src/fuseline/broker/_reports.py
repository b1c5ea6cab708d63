"""Accepting step reports: the checks before a transaction and the writes in it.

A report is checked on its own first (state, result size), outside any
transaction. Applying it then reads the run with its row lock, judges the
lease, records the outcome and lets the run's transitions settle what follows.
Every refusal is raised before the first write of that report, so a batch can
refuse one report and still commit the others in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuseline.broker._leases import report_applies
from fuseline.broker._transitions import RunTransitions
from fuseline.broker._validation import json_payload
from fuseline.errors import InvalidInputError, RunNotFoundError, StepNotFoundError
from fuseline.messages import StepError, StepReport
from fuseline.status import Status
from fuseline.storage import StorageTransaction, StoredRun, StoredStep, WorkflowKey
from fuseline.workflow import rules
from fuseline.workflow.rules import RunGraph

__all__ = ["CheckedReport", "Known", "apply_report", "check_report"]

Known = tuple[StoredRun | None, dict[str, StoredStep]]
"""A run read (and locked) ahead, or None when it does not exist, with its rows by name."""

_REPORTABLE = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELLED)


@dataclass(frozen=True)
class CheckedReport:
    """A report whose state and result passed the checks, with the values to store."""

    report: StepReport
    result: Any
    error: dict[str, Any] | None


def check_report(report: StepReport, max_result_bytes: int | None) -> CheckedReport:
    """Check what can be checked without the database.

    Raises:
        InvalidInputError: The state is not a final one, or the result is too large.
        ResultNotSerializableError: The result is not JSON data.
    """
    if report.state not in _REPORTABLE:
        raise InvalidInputError(
            f"A report's state must be one of {', '.join(s.value for s in _REPORTABLE)}, "
            f"not {report.state.value}.",
            details={"step_name": report.step_name},
        )
    succeeded = report.state is Status.SUCCEEDED
    result = (
        json_payload(report.result, f"result of step {report.step_name!r}", max_result_bytes)
        if succeeded
        else None
    )
    error = None if report.error is None else report.error.model_dump()
    if report.state is Status.FAILED and error is None:
        error = StepError(type="StepFailed", message="The worker gave no details.").model_dump()
    return CheckedReport(report, result, error)


def apply_report(
    t: StorageTransaction,
    worker_id: str,
    checked: CheckedReport,
    *,
    graph_of: Callable[[StorageTransaction, WorkflowKey], RunGraph],
    runs: RunTransitions,
    reachable_for: float | None,
    known: dict[str, Known],
) -> bool:
    """Record ``checked`` and settle what follows from it, inside transaction ``t``.

    ``known`` holds, by run id, runs this transaction has locked and read
    with their rows by step name (or None for a run found missing). The run
    is taken from there when present, and put there once read otherwise. Its
    entry is updated in place, so a later report of the same run, and a
    claim in the same transaction, see this one's changes.

    Returns:
        True when recorded; False when it repeats the report already accepted
        for the step (answer it as before and change nothing).

    Raises:
        RunNotFoundError, StepNotFoundError: Unknown run or step.
        InvalidInputError: The report names another workflow than its run's.
        LeaseConflictError: The worker does not hold the step's live lease.
    """
    report = checked.report
    entry = known.get(report.instance_id)
    if entry is None:
        # The steps come in the same round trip as the lock, read once it is held.
        found, steps = t.runs_with_steps([report.instance_id], lock=True)
        run = found.get(report.instance_id)
        rows = {row.step_name: row for row in steps.get(report.instance_id, [])}
        known[report.instance_id] = (run, rows)
    else:
        run, rows = entry
    if run is None:
        raise RunNotFoundError(
            f"No run {report.instance_id!r} exists.", details={"run_id": report.instance_id}
        )
    if report.workflow_id != run.workflow_id:
        raise InvalidInputError(
            f"Run {run.run_id!r} belongs to workflow {run.workflow_id!r}, "
            f"not {report.workflow_id!r}.",
            details={"run_id": run.run_id},
        )
    graph = graph_of(t, (run.workflow_id, run.version))
    if report.step_name not in graph.step_names:
        raise StepNotFoundError(
            f"Workflow {run.workflow_id!r} version {run.version!r} has no step "
            f"{report.step_name!r}.",
            details={"step_name": report.step_name},
        )
    step = rows.get(report.step_name)
    now = t.now()
    if not report_applies(step, worker_id, report, checked.result, now, reachable_for):
        return False
    assert step is not None  # noqa: S101 - report_applies checked it
    step.status = report.state
    step.result = checked.result
    step.error = checked.error
    if report.state is Status.SUCCEEDED:
        step.branch = rules.choose_branch(graph, step.step_name, checked.result)
    runs.finish(t, graph, run, step, rows, now)
    return True
