"""Models of the query strings the routes accept (unknown parameters are refused)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fuseline.clients.wire import MAX_WAIT_SECONDS
from fuseline.status import Status

__all__ = ["DispatchQuery", "RunListQuery", "RunWaitQuery", "WorkflowListQuery"]


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DispatchQuery(_Query):
    """How long ``POST /v1/runs`` may wait for the run it started to finish."""

    wait: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for the run to finish before answering (the server may "
        "cap this lower); the answer's `run` then holds the run, finished or as it stands.",
    )


class RunListQuery(_Query):
    """Filters and paging of ``GET /v1/runs``."""

    workflow_id: str | None = Field(default=None, min_length=1, max_length=200)
    status: Status | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, min_length=1, max_length=1000)


class RunWaitQuery(_Query):
    """How long ``GET /v1/runs/{run_id}/wait`` may hold the request."""

    timeout: float = Field(
        default=30.0,
        ge=0.0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for the run to finish; the server may cap this lower.",
    )


class WorkflowListQuery(_Query):
    """Filter of ``GET /v1/workflows``."""

    workflow_id: str | None = Field(default=None, min_length=1, max_length=200)
