"""How the ``fuseline`` command shows things: plain tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import pydantic

from fuseline.messages import RunDetails, RunPage, RunSummary, WorkerInfo
from fuseline.workflow import WorkflowSchema

__all__ = ["print_json", "show_run", "show_runs", "show_workers", "show_workflows", "table"]


def print_json(value: pydantic.BaseModel | Sequence[pydantic.BaseModel], out: TextIO) -> None:
    """Print a model, or a list of models, as one JSON document."""
    if isinstance(value, pydantic.BaseModel):
        plain: Any = value.model_dump(mode="json")
    else:
        plain = [item.model_dump(mode="json") for item in value]
    out.write(json.dumps(plain, indent=2, ensure_ascii=False) + "\n")


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Print rows under headers, each column as wide as its widest cell."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in (headers, *rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write(line.rstrip() + "\n")


def _cancelling(run: RunSummary) -> bool:
    return run.cancel_requested and not run.status.is_terminal


def show_runs(page: RunPage, out: TextIO) -> None:
    """A page of runs, and how to get the next one."""
    if not page.items:
        out.write("No runs.\n")
    else:
        rows = [
            [
                run.run_id,
                run.workflow_id,
                run.workflow_version,
                str(run.status) + (" (cancelling)" if _cancelling(run) else ""),
                _when(run.created_at),
                _when(run.finished_at),
            ]
            for run in page.items
        ]
        table(["RUN", "WORKFLOW", "VERSION", "STATUS", "CREATED", "FINISHED"], rows, out)
    if page.next_cursor:
        out.write(f"\nMore runs: add --cursor {page.next_cursor}\n")


def show_run(run: RunDetails, out: TextIO) -> None:
    """One run: its summary, its steps, its inputs and result."""
    out.write(f"Run       {run.run_id}\n")
    out.write(f"Workflow  {run.workflow_id} (version {run.workflow_version})\n")
    cancel = " (cancelling)" if _cancelling(run) else ""
    out.write(f"Status    {run.status}{cancel}\n")
    out.write(f"Created   {_when(run.created_at)}\n")
    out.write(f"Finished  {_when(run.finished_at)}\n")
    if run.steps:
        out.write("\n")
        rows = [
            [
                name,
                str(step.status),
                str(step.attempts),
                step.worker_id or "-",
                step.error.type + ": " + step.error.message.splitlines()[0][:80]
                if step.error and step.error.message
                else (step.error.type if step.error else ""),
            ]
            for name, step in run.steps.items()
        ]
        table(["STEP", "STATUS", "ATTEMPTS", "WORKER", "ERROR"], rows, out)
    out.write("\nInputs\n" + json.dumps(run.inputs, indent=2, ensure_ascii=False) + "\n")
    if run.result is not None:
        out.write("\nResult\n" + json.dumps(run.result, indent=2, ensure_ascii=False) + "\n")


def show_workflows(schemas: Sequence[WorkflowSchema], out: TextIO) -> None:
    """Stored workflow schemas, one line per version."""
    if not schemas:
        out.write("No workflows stored; a worker registers them when it starts.\n")
        return
    ordered = sorted(schemas, key=lambda s: (s.workflow_id, s.version))
    rows = [[s.workflow_id, s.version, str(len(s.steps)), ", ".join(s.outputs)] for s in ordered]
    table(["WORKFLOW", "VERSION", "STEPS", "OUTPUTS"], rows, out)


def show_workers(workers: Sequence[WorkerInfo], out: TextIO) -> None:
    """Registered workers and the workflow versions each one runs."""
    if not workers:
        out.write("No workers registered.\n")
        return
    rows = [
        [
            w.worker_id,
            w.name or "-",
            ", ".join(f"{wid}@{version}" for wid, version in w.workflows) or "-",
            _when(w.last_seen_at),
        ]
        for w in workers
    ]
    table(["WORKER", "NAME", "WORKFLOWS", "LAST SEEN"], rows, out)
