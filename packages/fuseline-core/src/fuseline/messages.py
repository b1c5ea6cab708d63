"""The models that brokers, clients and workers exchange.

They live in core so that every distribution speaks the same language. A
"run" is one execution of a workflow; the seeds' ``instance_id`` is its id.
"""

from __future__ import annotations

import traceback as traceback_module
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fuseline.errors import FuselineError, error_class_for_code
from fuseline.status import Status

__all__ = [
    "KeepAliveReply",
    "LeaseRef",
    "ReportBatchReply",
    "ReportOutcome",
    "RunDetails",
    "RunPage",
    "RunSummary",
    "StepAssignment",
    "StepError",
    "StepRecord",
    "StepReport",
    "WorkerInfo",
]

_MAX_TEXT = 64 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepError(_Model):
    """Why a step failed: the exception's type, message and traceback text."""

    type: str = Field(max_length=500)
    message: str = Field(default="", max_length=_MAX_TEXT)
    traceback: str | None = Field(default=None, max_length=_MAX_TEXT)

    @classmethod
    def from_exception(cls, exc: BaseException) -> StepError:
        """Describe ``exc``; long messages and tracebacks are cut to fit."""
        text = "".join(traceback_module.format_exception(exc))
        return cls(
            type=type(exc).__name__,
            message=str(exc)[:_MAX_TEXT],
            traceback=text[-_MAX_TEXT:],
        )


class StepAssignment(_Model):
    """A step handed to one worker, with what it needs to run and a deadline.

    Attributes:
        payload: ``{"workflow_inputs": {...}, "results": {step_name: result}}``:
            the run's inputs and the results of the step's predecessors.
        lease_token: Proves the worker holds the lease; send it with reports
            and heartbeats.
        deadline: When the lease expires unless extended by a heartbeat.
        attempt: 1 for the first hand-out, counting up on each re-hand-out.
    """

    workflow_id: str
    workflow_version: str = "1"
    instance_id: str
    step_name: str
    payload: dict[str, Any] = Field(default_factory=dict)
    attempt: int = 1
    lease_token: str | None = None
    deadline: datetime | None = None

    @property
    def run_id(self) -> str:
        """The run this step belongs to (same as ``instance_id``)."""
        return self.instance_id

    @property
    def workflow_inputs(self) -> dict[str, Any]:
        """The run's inputs."""
        inputs = self.payload.get("workflow_inputs") or {}
        return dict(inputs)

    @property
    def results(self) -> dict[str, Any]:
        """The predecessors' results, by step name."""
        return dict(self.payload.get("results") or {})


class StepReport(_Model):
    """A worker's account of one step: its final state and result or error."""

    workflow_id: str
    instance_id: str
    step_name: str
    state: Status
    result: Any = None
    error: StepError | None = None
    lease_token: str | None = None


class ReportOutcome(_Model):
    """What became of one report of a batch: accepted, or refused and why.

    Attributes:
        code: ``None`` when the report was accepted (or was an exact repeat of
            an accepted one); otherwise the stable code of the error that
            refused it, as in :mod:`fuseline.errors`, with ``message`` and
            ``details`` saying more.
    """

    instance_id: str
    step_name: str
    code: str | None = None
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def accepted_for(cls, report: StepReport) -> ReportOutcome:
        """The outcome of ``report`` when the broker recorded it."""
        return cls(instance_id=report.instance_id, step_name=report.step_name)

    @classmethod
    def refused(cls, report: StepReport, exc: FuselineError) -> ReportOutcome:
        """The outcome of ``report`` when ``exc`` refused it."""
        return cls(
            instance_id=report.instance_id,
            step_name=report.step_name,
            code=exc.code,
            message=str(exc),
            details=dict(exc.details),
        )

    @property
    def accepted(self) -> bool:
        """Whether the broker recorded the report."""
        return self.code is None

    def error(self) -> FuselineError | None:
        """The refusal as the typed exception of :mod:`fuseline.errors`, or ``None``."""
        if self.code is None:
            return None
        return error_class_for_code(self.code)(self.message, details=self.details)


class ReportBatchReply(_Model):
    """The answer to several reports sent at once.

    Attributes:
        outcomes: One per report, in the order the reports were sent.
        assignments: The steps claimed along with the reports (at most as many
            as were asked for).
    """

    outcomes: list[ReportOutcome] = Field(default_factory=list)
    assignments: list[StepAssignment] = Field(default_factory=list)


class StepRecord(_Model):
    """A step as the broker (or the in-process runner) knows it within a run."""

    name: str
    status: Status = Status.PENDING
    result: Any = None
    error: StepError | None = None
    attempts: int = 0
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunSummary(_Model):
    """A run without its step details."""

    run_id: str
    workflow_id: str
    workflow_version: str
    status: Status
    created_at: datetime
    finished_at: datetime | None = None
    cancel_requested: bool = False


class RunDetails(RunSummary):
    """A run with its inputs, step states and, once finished, its result.

    ``result`` maps each output step's name to its result.
    """

    inputs: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    result: dict[str, Any] | None = None

    @property
    def instance_id(self) -> str:
        """The seeds' name for ``run_id``."""
        return self.run_id

    @property
    def succeeded(self) -> bool:
        """Whether the run finished with status SUCCEEDED."""
        return self.status is Status.SUCCEEDED


class LeaseRef(_Model):
    """Names one leased step: its run, its name and the lease token."""

    instance_id: str
    step_name: str
    lease_token: str


class KeepAliveReply(_Model):
    """What a heartbeat learned.

    Attributes:
        deadline: The new deadline of the leases that were extended.
        extended: Leases still held and now extended.
        lost: Leases the worker no longer holds (expired and handed to someone
            else, or already reported): stop working on them, do not report.
        cancelled: Leases whose run was cancelled: stop working on them.
    """

    deadline: datetime | None = None
    extended: list[LeaseRef] = Field(default_factory=list)
    lost: list[LeaseRef] = Field(default_factory=list)
    cancelled: list[LeaseRef] = Field(default_factory=list)


class RunPage(_Model):
    """One page of runs, newest first; pass ``next_cursor`` to get the next page."""

    items: list[RunSummary]
    next_cursor: str | None = None


class WorkerInfo(_Model):
    """A registered worker."""

    worker_id: str
    name: str | None = None
    workflows: list[tuple[str, str]] = Field(default_factory=list)
    registered_at: datetime
    last_seen_at: datetime
