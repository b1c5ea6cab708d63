"""The route table: one entry per operation, used to serve it and to document it.

The server registers these routes with Robyn and builds ``/openapi.json``
from the same entries, so the document cannot drift from what is served.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from fuseline.broker.http import _handlers as h
from fuseline.broker.http._auth import ANY_ROLE, CLIENT, WORKER, Role
from fuseline.broker.http._context import CallContext, Reply
from fuseline.broker.http._queries import (
    DispatchQuery,
    RunListQuery,
    RunWaitQuery,
    WorkflowListQuery,
)
from fuseline.clients.wire import (
    API_PREFIX,
    ClaimRequest,
    ClaimResponse,
    DispatchRequest,
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
    NotFoundError,
    RunNotFoundError,
    WorkerNotFoundError,
    WorkflowNotFoundError,
)
from fuseline.messages import KeepAliveReply, ReportBatchReply, RunDetails, RunPage
from fuseline.workflow import WorkflowSchema

__all__ = ["ROUTES", "Endpoint"]

Handler = Callable[[CallContext], Awaitable[Reply]]

_PARAM = re.compile(r"\{(\w+)\}")

# What an unknown value of each path parameter is reported as.
PATH_PARAM_ERRORS: dict[str, type[NotFoundError]] = {
    "worker_id": WorkerNotFoundError,
    "run_id": RunNotFoundError,
    "workflow_id": WorkflowNotFoundError,
    "version": WorkflowNotFoundError,
}


@dataclass(frozen=True)
class Endpoint:
    """One operation of the API.

    Attributes:
        roles: Token roles allowed; ``None`` for a public route.
        body_optional: An empty body means ``{}`` (all fields have defaults).
        errors: Error statuses the operation can answer, for the document.
        links: OpenAPI links from the success response: (name, operationId,
            path parameter, field of the response body that fills it).
        example: A request body shown in the document (and tried by tools).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    response: type[pydantic.BaseModel]
    roles: frozenset[Role] | None = ANY_ROLE
    status: int = 200
    body: type[pydantic.BaseModel] | None = None
    body_optional: bool = False
    query: type[pydantic.BaseModel] | None = None
    errors: tuple[int, ...] = ()
    description: str = ""
    links: tuple[tuple[str, str, str, str], ...] = ()
    example: dict[str, Any] | None = None
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_params", tuple(_PARAM.findall(self.path)))

    @property
    def robyn_path(self) -> str:
        """The path in Robyn's syntax (``:name`` for ``{name}``)."""
        return _PARAM.sub(lambda m: f":{m.group(1)}", self.path)

    @property
    def pattern(self) -> re.Pattern[str]:
        """Matches concrete request paths of this route (to answer 405 correctly)."""
        pieces = _PARAM.split(self.path)  # literal, name, literal, name, ...
        regex = "".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(pieces))
        return re.compile(f"^{regex}$")


V1 = API_PREFIX

EXAMPLE_SCHEMA: dict[str, Any] = {
    "workflow_id": "summarise-page",
    "version": "1",
    "steps": [{"name": "fetch", "timeout_seconds": 30}, {"name": "summarise", "max_attempts": 3}],
    "edges": [{"source": "fetch", "target": "summarise"}],
    "outputs": ["summarise"],
}

ROUTES: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/health",
        "health",
        "Is the broker process up",
        "health",
        h.health,
        Health,
        roles=None,
        description="Needs no token and touches no database.",
    ),
    Endpoint(
        "POST",
        f"{V1}/workers",
        "registerWorker",
        "Register a worker and the workflow versions it runs",
        "workers",
        h.register_worker,
        RegisterWorkerResponse,
        roles=WORKER,
        status=201,
        body=RegisterWorkerRequest,
        example={"workflows": [EXAMPLE_SCHEMA], "name": "worker-1"},
        links=(
            ("claim", "claimSteps", "worker_id", "worker_id"),
            ("report", "reportStep", "worker_id", "worker_id"),
            ("reportBatch", "reportSteps", "worker_id", "worker_id"),
            ("heartbeat", "heartbeat", "worker_id", "worker_id"),
        ),
        errors=(400, 409, 413, 422),
        description="Stores each schema under its (workflow_id, version). Registering the same "
        "key with a different graph is refused with `schema_conflict`: bump the version.",
    ),
    Endpoint(
        "GET",
        f"{V1}/workers",
        "listWorkers",
        "List registered workers",
        "workers",
        h.list_workers,
        WorkerList,
    ),
    Endpoint(
        "POST",
        f"{V1}/workers/{{worker_id}}/claims",
        "claimSteps",
        "Claim ready steps (long poll)",
        "workers",
        h.claim_steps,
        ClaimResponse,
        roles=WORKER,
        body=ClaimRequest,
        body_optional=True,
        example={"max_steps": 1, "wait": 20},
        errors=(400, 404, 413, 422),
        description="Holds the request up to `wait` seconds (capped by the server) until a "
        "step the worker registered is ready. An empty list means none became ready.",
    ),
    Endpoint(
        "POST",
        f"{V1}/workers/{{worker_id}}/reports",
        "reportStep",
        "Report a step's outcome, optionally claiming the next step",
        "workers",
        h.report_step,
        ReportResponse,
        roles=WORKER,
        body=ReportRequest,
        errors=(400, 404, 409, 413, 422),
        description="Accepted only with the current lease token of a live lease; otherwise "
        "`lease_conflict` and nothing changes.",
    ),
    Endpoint(
        "POST",
        f"{V1}/workers/{{worker_id}}/reports/batch",
        "reportSteps",
        "Report several steps' outcomes at once, optionally claiming next steps",
        "workers",
        h.report_steps,
        ReportBatchReply,
        roles=WORKER,
        body=ReportBatchRequest,
        errors=(400, 404, 413, 422),
        description="One transaction for all the reports. Each report is judged alone: "
        "`outcomes` (in the order sent) has `code: null` for an accepted report and the "
        "error's code and message for a refused one (such as `lease_conflict`), which "
        "changed nothing. Up to `claim` steps are claimed in the same transaction, unless "
        "every report repeated one already accepted.",
    ),
    Endpoint(
        "POST",
        f"{V1}/workers/{{worker_id}}/heartbeat",
        "heartbeat",
        "Extend the worker's leases",
        "workers",
        h.heartbeat,
        KeepAliveReply,
        roles=WORKER,
        body=HeartbeatRequest,
        body_optional=True,
        errors=(400, 404, 413, 422),
        description="Lists the leases extended, lost, and cancelled (stop working on those).",
    ),
    Endpoint(
        "GET",
        f"{V1}/workflows",
        "listWorkflows",
        "List stored workflow schemas",
        "workflows",
        h.list_workflows,
        WorkflowList,
        query=WorkflowListQuery,
        errors=(422,),
    ),
    Endpoint(
        "GET",
        f"{V1}/workflows/{{workflow_id}}/versions/{{version}}",
        "getWorkflow",
        "Get one stored workflow schema",
        "workflows",
        h.get_workflow,
        WorkflowSchema,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        f"{V1}/runs",
        "dispatchRun",
        "Start a run",
        "runs",
        h.dispatch_run,
        RunCreated,
        roles=CLIENT,
        status=201,
        body=DispatchRequest,
        query=DispatchQuery,
        example={"workflow_id": "summarise-page", "inputs": {"url": "https://example.com"}},
        links=(
            ("get", "getRun", "run_id", "run_id"),
            ("wait", "waitForRun", "run_id", "run_id"),
            ("cancel", "cancelRun", "run_id", "run_id"),
        ),
        errors=(400, 404, 409, 413, 422),
        description="Send a schema in `workflow`, or name a stored one with `workflow_id` "
        "(and `version`, default: the latest). With an `Idempotency-Key` header (or the "
        "`idempotency_key` field) a repeated request returns the same run. With `wait`, "
        "the answer comes once the run is finished (or the wait is over) and carries it in "
        "`run`: starting a short run and getting its result takes one request.",
    ),
    Endpoint(
        "GET",
        f"{V1}/runs",
        "listRuns",
        "List runs, newest first",
        "runs",
        h.list_runs,
        RunPage,
        roles=CLIENT,
        query=RunListQuery,
        errors=(422,),
    ),
    Endpoint(
        "GET",
        f"{V1}/runs/{{run_id}}",
        "getRun",
        "Get a run with its steps and result",
        "runs",
        h.get_run,
        RunDetails,
        roles=CLIENT,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        f"{V1}/runs/{{run_id}}/wait",
        "waitForRun",
        "Wait for a run to finish (long poll)",
        "runs",
        h.wait_for_run,
        RunDetails,
        roles=CLIENT,
        query=RunWaitQuery,
        errors=(404, 422),
        description="Answers as soon as the run is finished, or with its current state once "
        "`timeout` seconds (capped by the server) have passed: check `status`.",
    ),
    Endpoint(
        "POST",
        f"{V1}/runs/{{run_id}}/cancel",
        "cancelRun",
        "Cancel a run",
        "runs",
        h.cancel_run,
        RunDetails,
        roles=CLIENT,
        errors=(404, 409),
        description="Pending steps are cancelled at once; running steps are told at their "
        "worker's next heartbeat.",
    ),
)
