"""What each HTTP client method sends and how it reads the answer.

The sync and the async client differ only in how they send a request; both
describe their requests with the :class:`Call` objects built here, so the
routes, bodies, retry safety and error decoding are written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote

import pydantic

from fuseline.clients.wire import (
    API_PREFIX,
    IDEMPOTENCY_HEADER,
    ClaimRequest,
    ClaimResponse,
    DispatchRequest,
    ErrorBody,
    Health,
    HeartbeatRequest,
    RegisterWorkerRequest,
    RegisterWorkerResponse,
    ReportBatchRequest,
    ReportRequest,
    ReportResponse,
    RunCreated,
    WorkerList,
    WorkflowList,
)
from fuseline.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    FuselineError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    error_class_for_code,
)
from fuseline.jsonvalue import to_json_value
from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.workflow import WorkflowSchema

__all__ = ["Call", "error_from_response"]

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)

# Statuses a proxy or an overloaded server answers before doing anything.
RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to turn a 2xx answer into a value.

    Attributes:
        retry_safe: Sending the request twice has the effect of sending it
            once, so it may be repeated after a failure that happened after
            the request may have reached the server. Any request may be
            repeated when the connection could not even be opened.
        wait: Seconds the server may hold the request (long poll); added to
            the client's read timeout.
    """

    method: str
    path: str
    parse: Callable[[bytes], T]
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = False
    wait: float = 0.0


def _segment(value: str) -> str:
    return quote(value, safe="")


def _model(model: type[M]) -> Callable[[bytes], M]:
    def parse(content: bytes) -> M:
        try:
            return model.model_validate_json(content)
        except pydantic.ValidationError as exc:
            raise FuselineError(
                f"The broker sent a {model.__name__} this client cannot read ({exc.error_count()} "
                "problems); are the client and the broker the same version?"
            ) from exc

    return parse


def _json(model: pydantic.BaseModel) -> bytes:
    return model.model_dump_json(exclude_defaults=False).encode()


# -- workers -------------------------------------------------------------------------


def register_worker(workflows: list[WorkflowSchema], name: str | None) -> Call[str]:
    """``POST /v1/workers``."""
    body = RegisterWorkerRequest(workflows=list(workflows), name=name)
    return Call(
        "POST",
        f"{API_PREFIX}/workers",
        lambda content: _model(RegisterWorkerResponse)(content).worker_id,
        body=_json(body),
    )


def claim(worker_id: str, max_steps: int, wait: float) -> Call[list[StepAssignment]]:
    """``POST /v1/workers/{id}/claims``."""
    body = ClaimRequest(max_steps=max_steps, wait=wait)
    return Call(
        "POST",
        f"{API_PREFIX}/workers/{_segment(worker_id)}/claims",
        lambda content: _model(ClaimResponse)(content).assignments,
        body=_json(body),
        wait=wait,
    )


def _plain_report(report: StepReport) -> StepReport:
    what = f"result of step {report.step_name!r}"
    return report.model_copy(update={"result": to_json_value(report.result, what=what)})


def report(worker_id: str, report: StepReport, claim_next: bool) -> Call[StepAssignment | None]:
    """``POST /v1/workers/{id}/reports``; safe to repeat when it names its lease."""
    body = ReportRequest(report=_plain_report(report), claim_next=claim_next)
    return Call(
        "POST",
        f"{API_PREFIX}/workers/{_segment(worker_id)}/reports",
        lambda content: _model(ReportResponse)(content).next,
        body=_json(body),
        # With a lease token, a repeat of a report that was already recorded
        # is answered without changing anything (and claims no second step);
        # without one the broker cannot tell a repeat apart.
        retry_safe=report.lease_token is not None,
    )


def report_batch(worker_id: str, reports: list[StepReport], claim: int) -> Call[ReportBatchReply]:
    """``POST /v1/workers/{id}/reports/batch``; safe to repeat when every report names its lease."""
    body = ReportBatchRequest(reports=[_plain_report(report) for report in reports], claim=claim)
    return Call(
        "POST",
        f"{API_PREFIX}/workers/{_segment(worker_id)}/reports/batch",
        _model(ReportBatchReply),
        body=_json(body),
        retry_safe=all(report.lease_token is not None for report in reports),
    )


def heartbeat(worker_id: str, lease_tokens: list[str] | None) -> Call[KeepAliveReply]:
    """``POST /v1/workers/{id}/heartbeat``; extending a lease twice is harmless."""
    return Call(
        "POST",
        f"{API_PREFIX}/workers/{_segment(worker_id)}/heartbeat",
        _model(KeepAliveReply),
        body=_json(HeartbeatRequest(lease_tokens=lease_tokens)),
        retry_safe=True,
    )


def list_workers() -> Call[list[WorkerInfo]]:
    """``GET /v1/workers``."""
    return Call(
        "GET",
        f"{API_PREFIX}/workers",
        lambda content: _model(WorkerList)(content).items,
        retry_safe=True,
    )


# -- applications ----------------------------------------------------------------------


def dispatch(request: DispatchRequest, idempotency_key: str, wait: float = 0.0) -> Call[RunCreated]:
    """``POST /v1/runs[?wait=...]``: always with a key, so that repeating it is safe.

    With ``wait`` the broker answers once the run is finished or the wait is
    over, with the run in the answer's ``run``.
    """
    target = request.root
    inputs = to_json_value(target.inputs, what="workflow inputs")
    plain = DispatchRequest(target.model_copy(update={"inputs": inputs}))
    return Call(
        "POST",
        f"{API_PREFIX}/runs",
        _model(RunCreated),
        body=_json(plain),
        params={"wait": _seconds(wait)} if wait > 0 else {},
        headers={IDEMPOTENCY_HEADER: idempotency_key},
        retry_safe=True,
        wait=wait,
    )


def get_run(run_id: str) -> Call[RunDetails]:
    """``GET /v1/runs/{id}``."""
    return Call("GET", f"{API_PREFIX}/runs/{_segment(run_id)}", _model(RunDetails), retry_safe=True)


def wait_run(run_id: str, timeout: float) -> Call[RunDetails]:
    """``GET /v1/runs/{id}/wait?timeout=...``: the run once finished or when time is up."""
    return Call(
        "GET",
        f"{API_PREFIX}/runs/{_segment(run_id)}/wait",
        _model(RunDetails),
        params={"timeout": _seconds(timeout)},
        retry_safe=True,
        wait=timeout,
    )


def list_runs(
    workflow_id: str | None, status: Status | None, limit: int, cursor: str | None
) -> Call[RunPage]:
    """``GET /v1/runs``."""
    params = {"limit": str(limit)}
    if workflow_id is not None:
        params["workflow_id"] = workflow_id
    if status is not None:
        params["status"] = Status(status).value
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", f"{API_PREFIX}/runs", _model(RunPage), params=params, retry_safe=True)


def cancel_run(run_id: str) -> Call[RunDetails]:
    """``POST /v1/runs/{id}/cancel``."""
    return Call("POST", f"{API_PREFIX}/runs/{_segment(run_id)}/cancel", _model(RunDetails))


def list_workflows(workflow_id: str | None = None) -> Call[list[WorkflowSchema]]:
    """``GET /v1/workflows``, optionally only the versions of one workflow."""
    params = {} if workflow_id is None else {"workflow_id": workflow_id}
    return Call(
        "GET",
        f"{API_PREFIX}/workflows",
        lambda content: _model(WorkflowList)(content).items,
        params=params,
        retry_safe=True,
    )


def get_workflow(workflow_id: str, version: str) -> Call[WorkflowSchema]:
    """``GET /v1/workflows/{id}/versions/{version}``."""
    path = f"{API_PREFIX}/workflows/{_segment(workflow_id)}/versions/{_segment(version)}"
    return Call("GET", path, _model(WorkflowSchema), retry_safe=True)


def health() -> Call[Health]:
    """``GET /health`` (no token needed)."""
    return Call("GET", "/health", _model(Health), retry_safe=True)


def _seconds(value: float) -> str:
    return format(max(value, 0.0), ".3f")


# -- errors ----------------------------------------------------------------------------

_STATUS_FALLBACK: dict[int, type[FuselineError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
}


def error_from_response(status: int, content: bytes, where: str) -> FuselineError:
    """The exception an error response stands for.

    The broker's JSON error bodies map back to the class named by their
    ``code``; anything else (a proxy's HTML page, say) is judged by its status.
    """
    try:
        body = ErrorBody.model_validate_json(content)
    except (pydantic.ValidationError, ValueError):
        body = None
    if body is not None:
        cls = error_class_for_code(body.error.code)
        return cls(body.error.message, details=body.error.details)
    snippet = content[:200].decode("utf-8", "replace").strip()
    message = f"HTTP {status} from {where}" + (f": {snippet}" if snippet else "")
    if status >= 500:
        return BrokerUnavailableError(message)
    return _STATUS_FALLBACK.get(status, FuselineError)(message)
