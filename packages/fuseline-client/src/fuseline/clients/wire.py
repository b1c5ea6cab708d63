"""The JSON bodies of the broker's HTTP API, version 1.

The HTTP server (``fuseline.broker.http``) validates requests and builds
responses with these models, and the HTTP clients build requests and read
responses with the same models, so both sides agree on every field. The step
and run models themselves (``StepAssignment``, ``RunDetails``...) come from
:mod:`fuseline.messages`; this module only adds the envelopes around them.

Every model forbids unknown fields: a typo in a request is an error, never
silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, RootModel, Tag

from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    RunDetails,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.workflow import WorkflowSchema
from fuseline.workflow.versions import latest_version

__all__ = [
    "API_PREFIX",
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_CLAIM_STEPS",
    "MAX_REPORT_BATCH",
    "MAX_WAIT_SECONDS",
    "ClaimRequest",
    "ClaimResponse",
    "DispatchRequest",
    "DispatchSchema",
    "DispatchStored",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "HeartbeatRequest",
    "KeepAliveReply",
    "RegisterWorkerRequest",
    "RegisterWorkerResponse",
    "ReportBatchReply",
    "ReportBatchRequest",
    "ReportRequest",
    "ReportResponse",
    "RunCreated",
    "WorkerList",
    "WorkflowList",
    "latest_version",
]

API_PREFIX = "/v1"
"""Every versioned route starts with this."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Request header that makes a dispatch safe to repeat (same as the body field)."""

MAX_WAIT_SECONDS = 60.0
"""Longest server-side wait one request may ask for; servers may cap it lower."""

MAX_CLAIM_STEPS = 100
"""Most steps one claim request may ask for."""

MAX_REPORT_BATCH = 100
"""Most reports one batch request may carry."""

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
"""What an idempotency key may be: 1 to 200 visible ASCII characters (it travels in a header)."""

_KEY = Field(default=None, min_length=1, max_length=200, pattern=IDEMPOTENCY_KEY_PATTERN)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Wire):
    """What went wrong: a stable ``code``, a message for humans, and context."""

    code: str = Field(description="Stable identifier; see fuseline.errors for the full list.")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Wire):
    """The body of every error response."""

    error: ErrorDetail


class Health(_Wire):
    """Answer of the unauthenticated health route."""

    status: Literal["ok"] = "ok"
    version: str
    storage: str = Field(description="Kind of storage backend: memory, sqlite or postgresql.")


class RegisterWorkerRequest(_Wire):
    """A worker announces the workflow versions it can run."""

    workflows: list[WorkflowSchema] = Field(min_length=1)
    name: str | None = Field(default=None, min_length=1, max_length=200)


class RegisterWorkerResponse(_Wire):
    """The id the worker uses in every later call."""

    worker_id: str


class ClaimRequest(_Wire):
    """Ask for ready steps, waiting up to ``wait`` seconds for the first one."""

    max_steps: int = Field(default=1, ge=1, le=MAX_CLAIM_STEPS)
    wait: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for a step; the server may cap this lower.",
    )


class ClaimResponse(_Wire):
    """The claimed steps; empty when none became ready in time."""

    assignments: list[StepAssignment]


class ReportRequest(_Wire):
    """A step's outcome, optionally claiming the worker's next step in the same call."""

    report: StepReport
    claim_next: bool = False


class ReportResponse(_Wire):
    """The next assignment when ``claim_next`` was asked for and a step was ready."""

    next: StepAssignment | None = None


class ReportBatchRequest(_Wire):
    """Several steps' outcomes at once, optionally claiming up to ``claim`` next steps."""

    reports: list[StepReport] = Field(min_length=1, max_length=MAX_REPORT_BATCH)
    claim: int = Field(
        default=0,
        ge=0,
        le=MAX_CLAIM_STEPS,
        description="Steps to claim in the same transaction; usually one per report.",
    )


class HeartbeatRequest(_Wire):
    """Extend the named leases, or every lease the worker holds when ``None``."""

    lease_tokens: list[str] | None = Field(default=None, max_length=10_000)


class DispatchSchema(_Wire):
    """Start a run of the schema sent along (stored first if the broker lacks it)."""

    workflow: WorkflowSchema
    inputs: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = _KEY


class DispatchStored(_Wire):
    """Start a run of a stored schema, by id and version (default: the latest)."""

    workflow_id: str = Field(min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = _KEY


def _dispatch_target(value: Any) -> str | None:
    # Pick the shape by its key, so that errors speak about that shape only.
    if isinstance(value, dict):
        if ("workflow" in value) == ("workflow_id" in value):
            return None
        return "schema" if "workflow" in value else "stored"
    if isinstance(value, DispatchSchema):
        return "schema"
    return "stored" if isinstance(value, DispatchStored) else None


_DispatchTarget = Annotated[
    Annotated[DispatchSchema, Tag("schema")] | Annotated[DispatchStored, Tag("stored")],
    Discriminator(
        _dispatch_target,
        custom_error_type="dispatch_target",
        custom_error_message="give exactly one of 'workflow' (a schema) and 'workflow_id'",
    ),
]


class DispatchRequest(RootModel[_DispatchTarget]):
    """Start a run: of the schema in ``workflow``, or of a stored ``workflow_id``.

    Without ``version`` the latest stored version is used (see
    :func:`latest_version`). ``idempotency_key`` (or the ``Idempotency-Key``
    header) makes the request safe to repeat: the same key returns the same run.
    """


class RunCreated(_Wire):
    """The run a dispatch started (or found again through its idempotency key)."""

    run_id: str
    workflow_id: str
    workflow_version: str
    run: RunDetails | None = Field(
        default=None,
        description="Only when the dispatch was asked to `wait`: the run once finished, or "
        "as it stood when the wait was over (check `status`).",
    )


class WorkflowList(_Wire):
    """Stored workflow schemas."""

    items: list[WorkflowSchema]


class WorkerList(_Wire):
    """Registered workers."""

    items: list[WorkerInfo]
