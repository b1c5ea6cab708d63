"""``LocalBrokerClient``: the client API over a broker object in this process."""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from fuseline.clients._base import BrokerClient
from fuseline.errors import IdempotencyConflictError, WaitTimeoutError
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

__all__ = ["LocalBrokerClient", "SeedBroker"]

# Leases handed out but not reported yet. A worker that loses leases never
# reports them, so the memory is bounded: the oldest entries go first.
_MAX_REMEMBERED_LEASES = 10_000
_MAX_POLL_INTERVAL = 0.5


class SeedBroker(Protocol):
    """The least a broker must offer: the five worker-facing methods of the seeds.

    The built-in brokers offer more (waiting, batches, idempotency keys, the
    run API); :class:`LocalBrokerClient` uses those when they are there and
    falls back to these five otherwise.
    """

    def register_worker(self, workflows: list[WorkflowSchema]) -> str:
        """Store the schemas and return a new worker id."""
        ...

    def dispatch_workflow(
        self, workflow: WorkflowSchema, inputs: dict[str, Any] | None = None
    ) -> str:
        """Start a run and return its id."""
        ...

    def get_step(self, worker_id: str) -> StepAssignment | None:
        """Hand out the next ready step, if any."""
        ...

    def report_step(self, worker_id: str, report: StepReport) -> Any:
        """Record a step's outcome."""
        ...

    def keep_alive(self, worker_id: str) -> KeepAliveReply | None:
        """Heartbeat."""
        ...


class LocalBrokerClient(BrokerClient):
    """Talks to a broker object living in the same process.

    Works with the built-in brokers and with a custom broker that only
    implements the five methods of :class:`SeedBroker`: optional arguments
    (``wait``, ``claim_next``, ``lease_tokens``...) are passed only to methods
    that accept them, and missing features are emulated (waiting by polling,
    batches by repeated calls).

    The client remembers the lease token of every assignment it hands out, so
    a report built without ``lease_token`` (as in the seed examples) is sent
    with the right one.

    Args:
        broker: The broker to call. The client does not own it: ``close()``
            leaves it open.
        poll_interval: First pause between polls when the broker cannot wait
            by itself; pauses grow up to half a second.
    """

    def __init__(self, broker: SeedBroker, *, poll_interval: float = 0.05) -> None:
        self.broker = broker
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._leases: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._idempotent_runs: dict[str, tuple[tuple[str, str], dict[str, Any], str]] = {}
        self._accepts_cache: dict[tuple[str, str], bool] = {}

    def __repr__(self) -> str:
        return f"LocalBrokerClient({self.broker!r})"

    # -- capabilities -------------------------------------------------------------
    def _method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.broker, name, None)
        if not callable(method):
            raise NotImplementedError(f"{type(self.broker).__name__} has no method {name!r}")
        return method  # type: ignore[no-any-return]

    def _has(self, name: str) -> bool:
        return callable(getattr(self.broker, name, None))

    def _accepts(self, name: str, parameter: str) -> bool:
        key = (name, parameter)
        if key not in self._accepts_cache:
            try:
                params = inspect.signature(self._method(name)).parameters
            except (TypeError, ValueError):
                found = False
            else:
                found = parameter in params or any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
                )
            self._accepts_cache[key] = found
        return self._accepts_cache[key]

    # -- lease memory ---------------------------------------------------------------
    def _remember(self, worker_id: str, assignment: StepAssignment | None) -> None:
        if assignment is None or assignment.lease_token is None:
            return
        key = (worker_id, assignment.instance_id, assignment.step_name)
        with self._lock:
            self._leases[key] = assignment.lease_token
            self._leases.move_to_end(key)
            while len(self._leases) > _MAX_REMEMBERED_LEASES:
                self._leases.popitem(last=False)

    def _with_lease(self, worker_id: str, report: StepReport) -> StepReport:
        key = (worker_id, report.instance_id, report.step_name)
        with self._lock:
            remembered = self._leases.pop(key, None)
        if report.lease_token is None and remembered is not None:
            return report.model_copy(update={"lease_token": remembered})
        return report

    # -- workers ----------------------------------------------------------------------
    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        """Register the workflow versions this worker runs; return its new worker id."""
        register = self._method("register_worker")
        if name is not None and self._accepts("register_worker", "name"):
            return str(register(list(workflows), name=name))
        return str(register(list(workflows)))

    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        """Claim one ready step, waiting up to ``wait`` seconds for one to appear."""
        get_step = self._method("get_step")
        if self._accepts("get_step", "wait"):
            assignment = get_step(worker_id, wait=wait)
        else:
            assignment = self._poll(lambda: get_step(worker_id), wait)
        self._remember(worker_id, assignment)
        return assignment  # type: ignore[no-any-return]

    def _poll(self, attempt: Callable[[], Any], wait: float) -> Any:
        deadline = time.monotonic() + max(wait, 0.0)
        interval = self._poll_interval
        while True:
            found = attempt()
            remaining = deadline - time.monotonic()
            if found is not None or remaining <= 0:
                return found
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, _MAX_POLL_INTERVAL)

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        """Claim up to ``max_steps`` ready steps, waiting up to ``wait`` seconds for the first."""
        if self._has("get_steps"):
            get_steps = self._method("get_steps")
            if self._accepts("get_steps", "wait"):
                found = list(get_steps(worker_id, max_steps=max_steps, wait=wait))
            else:
                found = list(get_steps(worker_id, max_steps=max_steps))
            for assignment in found:
                self._remember(worker_id, assignment)
            return found
        first = self.get_step(worker_id, wait=wait)
        if first is None:
            return []
        claimed = [first]
        while len(claimed) < max_steps:
            more = self.get_step(worker_id)
            if more is None:
                break
            claimed.append(more)
        return claimed

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        """Report a step's outcome; with ``claim_next`` also claim the next ready step.

        A report without ``lease_token`` gets the token of the assignment this
        client handed out for that step.
        """
        report = self._with_lease(worker_id, report)
        report_step = self._method("report_step")
        if self._accepts("report_step", "claim_next"):
            following = report_step(worker_id, report, claim_next=claim_next)
            nxt = following if isinstance(following, StepAssignment) else None
            self._remember(worker_id, nxt)
            return nxt
        report_step(worker_id, report)
        return self.get_step(worker_id) if claim_next else None

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        """Report several outcomes at once; one transaction when the broker offers batches.

        Reports without ``lease_token`` get the tokens this client handed out.
        """
        if not self._has("report_steps"):
            return super().report_steps(worker_id, reports, claim=claim)
        leased = [self._with_lease(worker_id, report) for report in reports]
        reply: ReportBatchReply = self._method("report_steps")(worker_id, leased, claim=claim)
        for assignment in reply.assignments:
            self._remember(worker_id, assignment)
        return reply

    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        """Heartbeat: extend the named leases (default: all the worker holds)."""
        keep_alive = self._method("keep_alive")
        if lease_tokens is not None and self._accepts("keep_alive", "lease_tokens"):
            reply = keep_alive(worker_id, lease_tokens)
        else:
            reply = keep_alive(worker_id)
        return reply if isinstance(reply, KeepAliveReply) else KeepAliveReply()

    # -- applications -----------------------------------------------------------------
    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run and return its id (the same id again for a repeated key).

        With a broker that does not take idempotency keys, this client
        remembers the keys it has seen itself.
        """
        dispatch = self._method("dispatch_workflow")
        if idempotency_key is None:
            return str(dispatch(workflow, inputs))
        if self._accepts("dispatch_workflow", "idempotency_key"):
            return str(dispatch(workflow, inputs, idempotency_key=idempotency_key))
        request = (workflow.key, dict(inputs or {}))
        with self._lock:
            seen = self._idempotent_runs.get(idempotency_key)
            if seen is None:
                run_id = str(dispatch(workflow, inputs))
                self._idempotent_runs[idempotency_key] = (*request, run_id)
                return run_id
        if seen[:2] != request:
            raise IdempotencyConflictError(
                f"Idempotency key {idempotency_key!r} was already used for another dispatch.",
                details={"idempotency_key": idempotency_key},
            )
        return seen[2]

    def get_run(self, run_id: str) -> RunDetails:
        """Return a run with its step states and result."""
        return self._method("get_run")(run_id)  # type: ignore[no-any-return]

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Wait until the run is finished and return it.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        if self._has("wait_for_run"):
            return self._method("wait_for_run")(run_id, timeout=timeout)  # type: ignore[no-any-return]
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self._poll_interval
        while True:
            run = self.get_run(run_id)
            if run.status.is_terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"Run {run_id!r} is still {run.status} after {timeout} seconds.",
                    details={"run_id": run_id, "status": str(run.status)},
                )
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))
            interval = min(interval * 2, _MAX_POLL_INTERVAL)

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Return a page of runs, newest first."""
        return self._method("list_runs")(  # type: ignore[no-any-return]
            workflow_id=workflow_id, status=status, limit=limit, cursor=cursor
        )

    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel a run and return its state."""
        return self._method("cancel_run")(run_id)  # type: ignore[no-any-return]

    def list_workflows(self) -> list[WorkflowSchema]:
        """Return the stored workflow schemas."""
        return list(self._method("list_workflows")())

    def get_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowSchema:
        """Return the stored schema of ``workflow_id`` (its latest version unless ``version``).

        Asks the broker for that one schema when it can look one up (the
        built-in brokers can), instead of reading every stored schema.

        Raises:
            WorkflowNotFoundError: The broker stores no such schema.
        """
        if self._has("find_workflow"):
            return self._method("find_workflow")(workflow_id, version)  # type: ignore[no-any-return]
        return super().get_workflow(workflow_id, version)

    def list_workers(self) -> list[WorkerInfo]:
        """Return the registered workers."""
        return list(self._method("list_workers")())
