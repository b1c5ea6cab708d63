"""A small in-memory broker client for the engine's unit tests.

It keeps each run in core's ``LocalRun`` (the same execution rules brokers
use), hands out assignments with lease tokens and deadlines, and lets a test
break it on purpose: make calls fail as if the broker were down, refuse the
token, lose or cancel leases at the next heartbeat, or expire leases that go
without a heartbeat.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fuseline import Status, Workflow
from fuseline.clients import BrokerClient
from fuseline.errors import (
    BrokerUnavailableError,
    LeaseConflictError,
    RunNotFoundError,
    WaitTimeoutError,
    WorkerNotFoundError,
)
from fuseline.messages import (
    KeepAliveReply,
    LeaseRef,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.workflow import WorkflowSchema
from fuseline.workflow._execution import StepOutcome
from fuseline.workflow._runner import LocalRun


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


@dataclass
class Lease:
    run: LocalRun
    step_name: str
    worker_id: str
    token: str
    deadline: datetime


@dataclass
class Calls:
    """What the engine asked of the fake, for assertions."""

    registered: list[list[WorkflowSchema]] = field(default_factory=list)
    claims: list[tuple[int, float]] = field(default_factory=list)
    reports: list[StepReport] = field(default_factory=list)
    rejected: list[StepReport] = field(default_factory=list)
    heartbeats: list[list[str]] = field(default_factory=list)


class FakeBrokerClient(BrokerClient):
    """An in-memory broker behind the ``BrokerClient`` interface.

    Args:
        lease: Seconds a lease lasts without a heartbeat.
        expire_leases: Reject reports and heartbeats for leases past their deadline.
    """

    def __init__(self, *, lease: float = 30.0, expire_leases: bool = False) -> None:
        self.lease = lease
        self.expire_leases = expire_leases
        self.calls = Calls()
        self.runs: dict[str, LocalRun] = {}
        self.leases: dict[str, Lease] = {}
        self.workers: dict[str, list[WorkflowSchema]] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.lose_at_heartbeat: set[str] = set()
        self.cancel_at_heartbeat: set[str] = set()
        self.on_claim: Callable[[StepAssignment], None] | None = None
        self.down_until: dict[str, float] = {}
        self._cond = threading.Condition()

    # -- test controls -----------------------------------------------------------------
    def fail(self, method: str, *errors: BaseException) -> None:
        """Make the next calls of ``method`` raise ``errors``, one per call."""
        with self._cond:
            self.failures.setdefault(method, []).extend(errors)

    def down_for(self, method: str, seconds: float) -> None:
        """Make ``method`` fail as if the broker were down for the next ``seconds``."""
        with self._cond:
            self.down_until[method] = time.monotonic() + seconds

    def unavailable(self, method: str, times: int) -> None:
        """Make ``method`` fail ``times`` times as if the broker were down."""
        self.fail(method, *(BrokerUnavailableError("broker down") for _ in range(times)))

    def start_run(self, workflow: Workflow, inputs: dict[str, Any] | None = None) -> str:
        """Start a run of the real ``workflow`` object (the fake needs its graph)."""
        run = LocalRun(workflow, workflow._run_inputs(inputs))
        with self._cond:
            self.runs[run.run_id] = run
            self._cond.notify_all()
        return run.run_id

    def details(self, run_id: str) -> RunDetails:
        with self._cond:
            return self.runs[run_id].details()

    def _maybe_fail(self, method: str) -> None:
        if time.monotonic() < self.down_until.get(method, 0.0):
            raise BrokerUnavailableError("broker down for a while")
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    # -- workers ---------------------------------------------------------------------
    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        with self._cond:
            self._maybe_fail("register_worker")
            self.calls.registered.append(list(workflows))
            worker_id = f"worker-{len(self.workers) + 1}"
            self.workers[worker_id] = list(workflows)
            return worker_id

    def _known(self, worker_id: str) -> None:
        if worker_id not in self.workers:
            raise WorkerNotFoundError(f"no worker {worker_id!r}")

    def _take_one(self, worker_id: str) -> StepAssignment | None:
        for run in self.runs.values():
            if run.queue:
                name, results = run.take()
                token = uuid.uuid4().hex
                deadline = datetime.now(UTC) + timedelta(seconds=self.lease)
                self.leases[token] = Lease(run, name, worker_id, token, deadline)
                schema = run.graph.schema
                assignment = StepAssignment(
                    workflow_id=schema.workflow_id,
                    workflow_version=schema.version,
                    instance_id=run.run_id,
                    step_name=name,
                    payload={"workflow_inputs": run.inputs, "results": results},
                    lease_token=token,
                    deadline=deadline,
                )
                if self.on_claim is not None:
                    self.on_claim(assignment)
                return assignment
        return None

    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        found = self.get_steps(worker_id, max_steps=1, wait=wait)
        return found[0] if found else None

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        with self._cond:
            self._maybe_fail("get_steps")
            self._known(worker_id)
            self.calls.claims.append((max_steps, wait))
            found: list[StepAssignment] = []
            self._cond.wait_for(lambda: any(r.queue for r in self.runs.values()), timeout=wait)
            while len(found) < max_steps:
                assignment = self._take_one(worker_id)
                if assignment is None:
                    break
                found.append(assignment)
            return found

    def _live(self, token: str | None, worker_id: str) -> Lease | None:
        lease = self.leases.get(token or "")
        if lease is None or lease.worker_id != worker_id:
            return None
        if self.expire_leases and lease.deadline < datetime.now(UTC):
            return None
        return lease

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        with self._cond:
            self._maybe_fail("report_step")
            lease = self._live(report.lease_token, worker_id)
            if lease is None:
                self.calls.rejected.append(report)
                raise LeaseConflictError(f"no live lease {report.lease_token!r}")
            del self.leases[lease.token]
            self.calls.reports.append(report)
            outcome = StepOutcome(report.state, result=report.result, error=report.error)
            lease.run.finish(lease.step_name, outcome)
            self._cond.notify_all()
            return self._take_one(worker_id) if claim_next else None

    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        with self._cond:
            self._maybe_fail("keep_alive")
            tokens = list(lease_tokens or [])
            self.calls.heartbeats.append(tokens)
            reply = KeepAliveReply()
            for token in tokens:
                lease = self._live(token, worker_id)
                ref_name = lease.step_name if lease else "?"
                ref_run = lease.run.run_id if lease else "?"
                ref = LeaseRef(instance_id=ref_run, step_name=ref_name, lease_token=token)
                if lease is None or token in self.lose_at_heartbeat:
                    self.leases.pop(token, None)
                    reply.lost.append(ref)
                elif token in self.cancel_at_heartbeat:
                    self.leases.pop(token, None)
                    reply.cancelled.append(ref)
                else:
                    lease.deadline = datetime.now(UTC) + timedelta(seconds=self.lease)
                    reply.extended.append(ref)
                    reply.deadline = lease.deadline
            return reply

    # -- applications -------------------------------------------------------------------
    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        raise NotImplementedError("use FakeBrokerClient.start_run(workflow_object, inputs)")

    def get_run(self, run_id: str) -> RunDetails:
        with self._cond:
            if run_id not in self.runs:
                raise RunNotFoundError(run_id)
            return self.runs[run_id].details()

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        with self._cond:
            done = self._cond.wait_for(
                lambda: self.runs[run_id].details().status.is_terminal, timeout=timeout
            )
            if not done:
                raise WaitTimeoutError(run_id)
            return self.runs[run_id].details()

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        raise NotImplementedError

    def cancel_run(self, run_id: str) -> RunDetails:
        raise NotImplementedError

    def list_workflows(self) -> list[WorkflowSchema]:
        return [schema for schemas in self.workers.values() for schema in schemas]

    def list_workers(self) -> list[WorkerInfo]:
        raise NotImplementedError
