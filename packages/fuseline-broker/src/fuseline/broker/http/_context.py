"""What a route handler works with: the broker, thread pools, the request's parts.

Broker calls block (they talk to a database), so handlers never make them on
the event loop: short calls go to one thread pool and long polls to another,
so a crowd of idle workers waiting for steps cannot starve dispatches and
reports of threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pydantic

from fuseline.broker.http._config import ServerConfig
from fuseline.broker.http._threads import ThreadLane
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

__all__ = ["CallContext", "FullBroker", "Pools", "Reply", "ServerState"]

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)


class FullBroker(Protocol):
    """The broker API the HTTP server exposes (what the built-in brokers offer)."""

    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        """Store schemas, return a worker id."""
        ...

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        """Claim ready steps."""
        ...

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        """Record a step's outcome."""
        ...

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        """Record several steps' outcomes in one transaction."""
        ...

    def keep_alive(
        self, worker_id: str, lease_tokens: list[str] | None = None
    ) -> KeepAliveReply | None:
        """Heartbeat."""
        ...

    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run."""
        ...

    def get_run(self, run_id: str) -> RunDetails:
        """Read a run."""
        ...

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Wait for a run to finish."""
        ...

    def await_run(self, run_id: str, timeout: float | None = None) -> RunDetails | None:
        """Wait for a run to finish; None when the time ran out first."""
        ...

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """List runs."""
        ...

    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel a run."""
        ...

    def list_workflows(self) -> list[WorkflowSchema]:
        """List schemas."""
        ...

    def find_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowSchema:
        """One stored schema; the latest version when ``version`` is None."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """List workers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class ServerState:
    """Requests in flight and whether the process is shutting down."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._inflight = 0
        self._changed = threading.Condition()

    def enter(self) -> None:
        """A request starts."""
        with self._changed:
            self._inflight += 1

    def leave(self) -> None:
        """A request ends."""
        with self._changed:
            self._inflight -= 1
            self._changed.notify_all()

    @property
    def inflight(self) -> int:
        """Requests being handled now."""
        return self._inflight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._inflight == 0, timeout)


class Pools:
    """The two thread pools of one server process."""

    def __init__(self, config: ServerConfig) -> None:
        self.quick = ThreadLane(config.threads, "fuseline-db")
        self.waiting = ThreadLane(config.max_waiters, "fuseline-wait")

    def shutdown(self) -> None:
        """Stop taking work; running calls finish in the background."""
        self.quick.close()
        self.waiting.close()


@dataclass(frozen=True)
class Reply:
    """A handler's answer: a model, its status and extra headers."""

    body: pydantic.BaseModel
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallContext:
    """One request, already authenticated and validated."""

    broker: FullBroker
    config: ServerConfig
    state: ServerState
    pools: Pools
    storage: str
    path: Mapping[str, str]
    headers: Mapping[str, str]
    body: pydantic.BaseModel | None = None
    query: pydantic.BaseModel | None = None
    body_size: int = 0

    def body_as(self, model: type[M]) -> M:
        """The validated body, typed."""
        assert isinstance(self.body, model)  # noqa: S101 - the route table guarantees it
        return self.body

    def query_as(self, model: type[M]) -> M:
        """The validated query parameters, typed."""
        assert isinstance(self.query, model)  # noqa: S101 - the route table guarantees it
        return self.query

    async def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short blocking call in the database thread pool."""
        return await self.pools.quick.call(functools.partial(func, *args, **kwargs))

    async def run_waiting(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that may block for a while (a long poll) in the waiting pool."""
        return await self.pools.waiting.call(functools.partial(func, *args, **kwargs))
