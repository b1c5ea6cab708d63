"""The route handlers: each translates one validated request into broker calls.

Handlers hold no state of their own: everything lives in the broker's
storage, so any number of server processes can answer any request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

from fuseline.broker.http._context import CallContext, Reply
from fuseline.broker.http._errors import HttpError
from fuseline.broker.http._parsing import json_size
from fuseline.broker.http._queries import (
    DispatchQuery,
    RunListQuery,
    RunWaitQuery,
    WorkflowListQuery,
)
from fuseline.clients.wire import (
    API_PREFIX,
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    ClaimRequest,
    ClaimResponse,
    DispatchRequest,
    DispatchSchema,
    DispatchStored,
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
    FuselineError,
    InvalidInputError,
    LeaseConflictError,
    PayloadTooLargeError,
)
from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    ReportOutcome,
    RunDetails,
    StepAssignment,
    StepReport,
)
from fuseline.workflow import WorkflowSchema

__all__ = [
    "cancel_run",
    "claim_steps",
    "dispatch_run",
    "get_run",
    "get_workflow",
    "health",
    "heartbeat",
    "list_runs",
    "list_workers",
    "list_workflows",
    "register_worker",
    "report_step",
    "report_steps",
    "wait_for_run",
]

# Long polls are cut into slices this long, so that a shutting-down process
# answers its waiting workers within about a second instead of holding them,
# and so that long polls waiting in line for a thread (all of them busy) get
# one within about a second. A slice ends inside its thread: the event loop
# hears of a long poll only when it is over or gives up its thread.
WAIT_SLICE_SECONDS = 1.0
T = TypeVar("T")
_KEY_PATTERN = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _too_large(message: str, size: int, limit: int) -> HttpError:
    return HttpError(413, PayloadTooLargeError(message, details={"size": size, "limit": limit}))


def _check_schema(ctx: CallContext, schema: WorkflowSchema) -> None:
    limit = ctx.config.limits.max_schema_steps
    if len(schema.steps) > limit:
        raise _too_large(
            f"Workflow {schema.workflow_id!r} has {len(schema.steps)} steps; this broker "
            f"accepts at most {limit} per schema.",
            len(schema.steps),
            limit,
        )


def _check_report(ctx: CallContext, report: StepReport) -> None:
    if report.lease_token is None:
        # In-process callers are trusted code; over the network the worker id
        # alone (which clients can list) must not be enough to report a step.
        raise LeaseConflictError(
            "A report over HTTP must carry the lease_token of its assignment.",
            details={"step_name": report.step_name},
        )
    _check_value(ctx, report.result, f"result of step {report.step_name!r}")


# Bytes of compact JSON that one character of the request body can become in
# any value parsed from it (the body's length counts characters or bytes).
# Structure and literals never grow, whitespace goes, a character of a string
# stays itself (at most 4 bytes of UTF-8) or an escape no longer than it was.
# Only numbers grow: 1e15 (4 characters) becomes 1000000000000000.0 (18), and
# none grows more than five times; eight leaves room to spare.
_MOST_GROWTH = 8


def _check_value(ctx: CallContext, value: object, what: str) -> None:
    limit = ctx.config.limits.max_result_bytes
    if ctx.body_size * _MOST_GROWTH <= limit:
        # Nothing in so small a body can be over the limit: skip serializing.
        return
    size = json_size(value)
    if size > limit:
        raise _too_large(
            f"The {what} is {size} bytes of JSON; this broker accepts at most {limit}. "
            "Store large data elsewhere and pass a reference.",
            size,
            limit,
        )


# -- health --------------------------------------------------------------------------


async def health(ctx: CallContext) -> Reply:
    """Whether this process is up; touches no database."""
    from fuseline import __version__

    return Reply(Health(version=__version__, storage=ctx.storage))


# -- workers -------------------------------------------------------------------------


async def register_worker(ctx: CallContext) -> Reply:
    """Store the worker's schemas and give it an id."""
    body = ctx.body_as(RegisterWorkerRequest)
    for schema in body.workflows:
        _check_schema(ctx, schema)
    worker_id = await ctx.run(ctx.broker.register_worker, body.workflows, name=body.name)
    return Reply(RegisterWorkerResponse(worker_id=worker_id), status=201)


async def claim_steps(ctx: CallContext) -> Reply:
    """Hand out ready steps, holding the request until one is ready or time is up."""
    body = ctx.body_as(ClaimRequest)
    worker_id = ctx.path["worker_id"]
    wait = min(body.wait, ctx.config.limits.max_wait_seconds)
    if wait <= 0:
        found = await ctx.run(ctx.broker.get_steps, worker_id, max_steps=body.max_steps)
        return Reply(ClaimResponse(assignments=found))
    deadline = time.monotonic() + wait

    def claim(piece: float) -> list[StepAssignment]:
        return ctx.broker.get_steps(worker_id, max_steps=body.max_steps, wait=piece)

    claimed: list[StepAssignment] | None
    while True:
        claimed, over = await ctx.run_waiting(_in_slices, ctx, deadline, claim)
        if over:
            return Reply(ClaimResponse(assignments=claimed or []))
        # Other long polls wait for a thread: this one goes back in line.


def _in_slices(
    ctx: CallContext, deadline: float, wait: Callable[[float], T]
) -> tuple[T | None, bool]:
    """A long poll, in a waiting thread: ``wait(seconds)`` slice after slice.

    It stays in its thread from one slice to the next, which costs nothing.
    Returns what a slice found (or None) and whether the poll is over:
    something was found, the time is up or the process is stopping. Over is
    False when it gives its thread up after a slice because other long polls
    wait in line for one (every thread busy).
    """
    while not ctx.state.stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        piece = min(remaining, WAIT_SLICE_SECONDS)
        found = wait(piece)
        if found or piece >= remaining:
            return found or None, True
        if ctx.pools.waiting.crowded:
            return None, False
    return None, True


async def report_step(ctx: CallContext) -> Reply:
    """Record a step's outcome, and claim the next step when asked to."""
    body = ctx.body_as(ReportRequest)
    _check_report(ctx, body.report)
    following = await ctx.run(
        ctx.broker.report_step, ctx.path["worker_id"], body.report, claim_next=body.claim_next
    )
    return Reply(ReportResponse(next=following))


async def report_steps(ctx: CallContext) -> Reply:
    """Record several outcomes in one transaction; each one is accepted or refused alone."""
    body = ctx.body_as(ReportBatchRequest)
    refused: dict[int, ReportOutcome] = {}
    for index, report in enumerate(body.reports):
        try:
            _check_report(ctx, report)
        except HttpError as exc:
            refused[index] = ReportOutcome.refused(report, exc.error)
        except FuselineError as exc:
            refused[index] = ReportOutcome.refused(report, exc)
    sent = [report for index, report in enumerate(body.reports) if index not in refused]
    reply = ReportBatchReply()
    if sent:
        reply = await ctx.run(
            ctx.broker.report_steps, ctx.path["worker_id"], sent, claim=body.claim
        )
    answered = iter(reply.outcomes)
    outcomes = [refused[i] if i in refused else next(answered) for i in range(len(body.reports))]
    return Reply(ReportBatchReply(outcomes=outcomes, assignments=reply.assignments))


async def heartbeat(ctx: CallContext) -> Reply:
    """Extend the worker's leases and tell it which ones it lost or must cancel."""
    body = ctx.body_as(HeartbeatRequest)
    reply = await ctx.run(ctx.broker.keep_alive, ctx.path["worker_id"], body.lease_tokens)
    # A broker written for the seeds' interface may answer a heartbeat with None.
    return Reply(reply if reply is not None else KeepAliveReply())


async def list_workers(ctx: CallContext) -> Reply:
    """Every registered worker."""
    return Reply(WorkerList(items=await ctx.run(ctx.broker.list_workers)))


# -- workflows -----------------------------------------------------------------------


async def list_workflows(ctx: CallContext) -> Reply:
    """Stored schemas, optionally only the versions of one workflow."""
    query = ctx.query_as(WorkflowListQuery)
    schemas = await ctx.run(ctx.broker.list_workflows)
    if query.workflow_id is not None:
        schemas = [s for s in schemas if s.workflow_id == query.workflow_id]
    return Reply(WorkflowList(items=schemas))


async def get_workflow(ctx: CallContext) -> Reply:
    """One stored schema by id and version."""
    found = await ctx.run(ctx.broker.find_workflow, ctx.path["workflow_id"], ctx.path["version"])
    return Reply(found)


# -- runs ----------------------------------------------------------------------------


def _idempotency_key(ctx: CallContext, body: DispatchSchema | DispatchStored) -> str | None:
    header = ctx.headers.get(IDEMPOTENCY_HEADER.lower())
    if header is not None and not _KEY_PATTERN.fullmatch(header):
        raise HttpError(
            422,
            InvalidInputError(
                f"The {IDEMPOTENCY_HEADER} header must be 1 to 200 visible ASCII characters."
            ),
        )
    if header is not None and body.idempotency_key is not None and header != body.idempotency_key:
        raise HttpError(
            422,
            InvalidInputError(
                f"The {IDEMPOTENCY_HEADER} header and the body's idempotency_key differ; "
                "send one of them, or the same key in both."
            ),
        )
    return header if header is not None else body.idempotency_key


async def dispatch_run(ctx: CallContext) -> Reply:
    """Start a run of the schema sent, or of a stored schema picked by id and version."""
    body = ctx.body_as(DispatchRequest).root
    key = _idempotency_key(ctx, body)
    _check_value(ctx, body.inputs, "set of workflow inputs")
    if isinstance(body, DispatchSchema):
        schema = body.workflow
        _check_schema(ctx, schema)
    else:
        schema = await ctx.run(ctx.broker.find_workflow, body.workflow_id, body.version)
    run_id = await ctx.run(ctx.broker.dispatch_workflow, schema, body.inputs, idempotency_key=key)
    wait = ctx.query_as(DispatchQuery).wait
    created = RunCreated(
        run_id=run_id,
        workflow_id=schema.workflow_id,
        workflow_version=schema.version,
        run=await _run_when_finished(ctx, run_id, wait) if wait > 0 else None,
    )
    location = f"{API_PREFIX}/runs/{quote(run_id, safe='')}"
    return Reply(created, status=201, headers={"Location": location})


async def list_runs(ctx: CallContext) -> Reply:
    """A page of runs, newest first."""
    query = ctx.query_as(RunListQuery)
    page = await ctx.run(
        ctx.broker.list_runs,
        workflow_id=query.workflow_id,
        status=query.status,
        limit=query.limit,
        cursor=query.cursor,
    )
    return Reply(page)


async def get_run(ctx: CallContext) -> Reply:
    """One run with its steps and, once finished, its result."""
    return Reply(await ctx.run(ctx.broker.get_run, ctx.path["run_id"]))


async def wait_for_run(ctx: CallContext) -> Reply:
    """The run once it is finished, or as it stands when the wait is over."""
    query = ctx.query_as(RunWaitQuery)
    return Reply(await _run_when_finished(ctx, ctx.path["run_id"], query.timeout))


async def _run_when_finished(ctx: CallContext, run_id: str, seconds: float) -> RunDetails:
    """The run once it is finished, or as it stands after ``seconds`` (capped by the server)."""
    deadline = time.monotonic() + min(seconds, ctx.config.limits.max_wait_seconds)

    def wait(piece: float) -> RunDetails | None:
        return ctx.broker.await_run(run_id, timeout=piece)

    details: RunDetails | None
    while True:
        details, over = await ctx.run_waiting(_in_slices, ctx, deadline, wait)
        if details is not None:
            return details
        if over:
            return await ctx.run(ctx.broker.get_run, run_id)


async def cancel_run(ctx: CallContext) -> Reply:
    """Cancel a run: pending steps at once, running ones at their next heartbeat."""
    return Reply(await ctx.run(ctx.broker.cancel_run, ctx.path["run_id"]))
