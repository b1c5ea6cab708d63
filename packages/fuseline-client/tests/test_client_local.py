"""LocalBrokerClient over brokers that offer everything, or only the seeds' five methods."""

# Tokens and lease tokens here are made-up test values, not secrets.
# ruff: noqa: S105, S106, S107

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from fuseline import Status, StepReport
from fuseline.clients import BrokerClient, LocalBrokerClient
from fuseline.errors import (
    IdempotencyConflictError,
    InvalidInputError,
    WaitTimeoutError,
    WorkflowNotFoundError,
)
from fuseline.messages import KeepAliveReply, RunDetails, StepAssignment
from fuseline.workflow import StepSchema, WorkflowSchema


def schema(workflow_id: str = "flow", version: str = "1") -> WorkflowSchema:
    return WorkflowSchema(
        workflow_id=workflow_id, version=version, steps=(StepSchema(name="a"),), outputs=("a",)
    )


def assignment(step: str = "a", run: str = "run-1", token: str | None = "tok-1") -> StepAssignment:
    return StepAssignment(workflow_id="flow", instance_id=run, step_name=step, lease_token=token)


def run_details(run_id: str, status: Status) -> RunDetails:
    return RunDetails(
        run_id=run_id,
        workflow_id="flow",
        workflow_version="1",
        status=status,
        created_at=datetime.now(UTC),
    )


class SeedOnlyBroker:
    """The five methods of the seeds, with the seeds' signatures and nothing else."""

    def __init__(self) -> None:
        self.ready: list[StepAssignment] = []
        self.reports: list[StepReport] = []
        self.dispatched: list[tuple[WorkflowSchema, dict[str, Any] | None]] = []
        self.get_step_calls = 0
        self.registered: list[list[WorkflowSchema]] = []
        self.appear_after: int | None = None

    def register_worker(self, workflows: list[WorkflowSchema]) -> str:
        self.registered.append(workflows)
        return "worker-1"

    def dispatch_workflow(
        self, workflow: WorkflowSchema, inputs: dict[str, Any] | None = None
    ) -> str:
        self.dispatched.append((workflow, inputs))
        return f"run-{len(self.dispatched)}"

    def get_step(self, worker_id: str) -> StepAssignment | None:
        self.get_step_calls += 1
        if self.appear_after is not None and self.get_step_calls >= self.appear_after:
            self.ready.append(assignment())
            self.appear_after = None
        return self.ready.pop(0) if self.ready else None

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self.reports.append(report)

    def keep_alive(self, worker_id: str) -> None:
        return None


class FullBroker(SeedOnlyBroker):
    """Accepts every optional argument and records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.runs: dict[str, list[Status]] = {}

    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        self.calls.append(("register_worker", {"name": name}))
        return "worker-full"

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        self.calls.append(("get_steps", {"max_steps": max_steps, "wait": wait}))
        taken, self.ready = self.ready[:max_steps], self.ready[max_steps:]
        return taken

    def report_step(  # type: ignore[override]
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        self.calls.append(("report_step", {"claim_next": claim_next}))
        self.reports.append(report)
        return assignment("b", token="tok-next") if claim_next else None

    def keep_alive(  # type: ignore[override]
        self, worker_id: str, lease_tokens: list[str] | None = None
    ) -> KeepAliveReply:
        self.calls.append(("keep_alive", {"lease_tokens": lease_tokens}))
        return KeepAliveReply()

    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        self.calls.append(("dispatch_workflow", {"idempotency_key": idempotency_key}))
        return "run-full"

    def list_workflows(self) -> list[WorkflowSchema]:
        return [schema("flow", "1"), schema("flow", "2"), schema("flow", "10"), schema("other")]

    def get_run(self, run_id: str) -> RunDetails:
        statuses = self.runs[run_id]
        return run_details(run_id, statuses.pop(0) if len(statuses) > 1 else statuses[0])


# -- seed-only brokers -------------------------------------------------------------


def test_a_seed_broker_gets_only_the_arguments_it_takes() -> None:
    broker = SeedOnlyBroker()
    client = LocalBrokerClient(broker)
    assert isinstance(client, BrokerClient)
    assert client.register_worker([schema()], name="ignored") == "worker-1"
    assert client.dispatch_workflow(schema(), {"x": 1}) == "run-1"
    assert broker.dispatched == [(schema(), {"x": 1})]
    assert client.keep_alive("worker-1", ["tok"]) == KeepAliveReply()


def test_a_seed_style_report_without_lease_token_gets_the_handed_out_token() -> None:
    broker = SeedOnlyBroker()
    broker.ready.append(assignment(token="secret-lease"))
    client = LocalBrokerClient(broker)
    got = client.get_step("worker-1")
    assert got is not None
    client.report_step(
        "worker-1",
        StepReport(
            workflow_id=got.workflow_id,
            instance_id=got.instance_id,
            step_name=got.step_name,
            state=Status.SUCCEEDED,
            result=1,
        ),
    )
    assert broker.reports[0].lease_token == "secret-lease"
    # The token is used once: a second report of the same step is sent as given.
    client.report_step(
        "worker-1",
        StepReport(workflow_id="flow", instance_id="run-1", step_name="a", state=Status.SUCCEEDED),
    )
    assert broker.reports[1].lease_token is None


def test_an_explicit_lease_token_is_never_replaced() -> None:
    broker = SeedOnlyBroker()
    broker.ready.append(assignment(token="remembered"))
    client = LocalBrokerClient(broker)
    client.get_step("worker-1")
    report = StepReport(
        workflow_id="flow",
        instance_id="run-1",
        step_name="a",
        state=Status.FAILED,
        lease_token="explicit",
    )
    client.report_step("worker-1", report)
    assert broker.reports[0].lease_token == "explicit"


def test_waiting_is_emulated_by_polling_a_broker_that_cannot_wait() -> None:
    broker = SeedOnlyBroker()
    broker.appear_after = 3
    client = LocalBrokerClient(broker, poll_interval=0.001)
    got = client.get_step("worker-1", wait=30)
    assert got is not None and got.step_name == "a"
    assert broker.get_step_calls == 3


def test_polling_gives_up_when_the_wait_is_over() -> None:
    broker = SeedOnlyBroker()
    client = LocalBrokerClient(broker, poll_interval=0.001)
    assert client.get_step("worker-1", wait=0.02) is None
    assert broker.get_step_calls >= 2


def test_batches_and_claim_next_are_emulated() -> None:
    broker = SeedOnlyBroker()
    broker.ready += [assignment("a", token="t1"), assignment("b", token="t2")]
    client = LocalBrokerClient(broker)
    claimed = client.get_steps("worker-1", max_steps=5)
    assert [a.step_name for a in claimed] == ["a", "b"]
    broker.ready.append(assignment("c", token="t3"))
    following = client.report_step(
        "worker-1",
        StepReport(workflow_id="flow", instance_id="run-1", step_name="a", state=Status.SUCCEEDED),
        claim_next=True,
    )
    assert following is not None and following.step_name == "c"
    assert broker.reports[0].lease_token == "t1"


def test_a_batch_of_reports_is_sent_one_by_one_to_a_seed_broker() -> None:
    broker = SeedOnlyBroker()
    broker.ready += [assignment("a", token="t1"), assignment("b", token="t2")]
    client = LocalBrokerClient(broker)
    client.get_steps("worker-1", max_steps=2)
    broker.ready.append(assignment("c", token="t3"))
    reports = [
        StepReport(workflow_id="flow", instance_id="run-1", step_name=name, state=Status.SUCCEEDED)
        for name in ("a", "b")
    ]
    reply = client.report_steps("worker-1", reports, claim=2)
    assert [r.lease_token for r in broker.reports] == ["t1", "t2"]
    assert [o.accepted for o in reply.outcomes] == [True, True]
    # Each report may claim one step until ``claim`` steps are held.
    assert [a.step_name for a in reply.assignments] == ["c"]


def test_idempotency_keys_are_remembered_for_a_broker_without_them() -> None:
    broker = SeedOnlyBroker()
    client = LocalBrokerClient(broker)
    first = client.dispatch_workflow(schema(), {"x": 1}, idempotency_key="k")
    again = client.dispatch_workflow(schema(), {"x": 1}, idempotency_key="k")
    assert first == again and len(broker.dispatched) == 1
    with pytest.raises(IdempotencyConflictError):
        client.dispatch_workflow(schema(), {"x": 2}, idempotency_key="k")


def test_the_run_api_of_a_seed_broker_says_it_is_missing() -> None:
    client = LocalBrokerClient(SeedOnlyBroker())
    with pytest.raises(NotImplementedError, match="get_run"):
        client.get_run("run-1")
    with pytest.raises(NotImplementedError, match="list_workflows"):
        client.dispatch("flow")


# -- brokers with the full API -------------------------------------------------------


def test_optional_arguments_reach_a_broker_that_takes_them() -> None:
    broker = FullBroker()
    client = LocalBrokerClient(broker)
    client.register_worker([schema()], name="w")
    client.get_steps("w", max_steps=3, wait=1.5)
    client.keep_alive("w", ["t"])
    client.dispatch_workflow(schema(), idempotency_key="key")
    following = client.report_step(
        "w",
        StepReport(workflow_id="flow", instance_id="r", step_name="a", state=Status.SUCCEEDED),
        claim_next=True,
    )
    assert following is not None and following.lease_token == "tok-next"
    assert broker.calls == [
        ("register_worker", {"name": "w"}),
        ("get_steps", {"max_steps": 3, "wait": 1.5}),
        ("keep_alive", {"lease_tokens": ["t"]}),
        ("dispatch_workflow", {"idempotency_key": "key"}),
        ("report_step", {"claim_next": True}),
    ]


def test_the_lease_of_a_claim_next_assignment_is_remembered_too() -> None:
    broker = FullBroker()
    client = LocalBrokerClient(broker)
    report = StepReport(workflow_id="flow", instance_id="r", step_name="a", state=Status.SUCCEEDED)
    following = client.report_step("w", report, claim_next=True)
    assert following is not None
    client.report_step(
        "w",
        StepReport(
            workflow_id="flow",
            instance_id=following.instance_id,
            step_name=following.step_name,
            state=Status.SUCCEEDED,
        ),
    )
    assert broker.reports[-1].lease_token == "tok-next"


def test_dispatch_by_id_picks_the_latest_version_numerically() -> None:
    client = LocalBrokerClient(FullBroker())
    assert client.get_workflow("flow").version == "10"
    assert client.get_workflow("flow", "2").version == "2"
    with pytest.raises(WorkflowNotFoundError):
        client.get_workflow("flow", "3")
    with pytest.raises(WorkflowNotFoundError):
        client.get_workflow("missing")


def test_dispatch_accepts_a_schema_a_workflow_or_an_id() -> None:
    broker = FullBroker()
    client = LocalBrokerClient(broker)

    class HasSchema:
        def to_schema(self) -> WorkflowSchema:
            return schema("other")

    assert client.dispatch(schema()) == "run-full"
    assert client.dispatch(HasSchema()) == "run-full"
    assert client.dispatch("flow", version="2") == "run-full"
    with pytest.raises(InvalidInputError, match="version"):
        client.dispatch(schema(), version="9")


def test_wait_for_run_polls_when_the_broker_cannot_wait() -> None:
    broker = FullBroker()
    broker.runs["r"] = [Status.PENDING, Status.RUNNING, Status.SUCCEEDED]
    client = LocalBrokerClient(broker, poll_interval=0.001)
    assert client.wait_for_run("r").status is Status.SUCCEEDED
    broker.runs["slow"] = [Status.RUNNING]
    with pytest.raises(WaitTimeoutError):
        client.wait_for_run("slow", timeout=0.01)


def test_run_workflow_dispatches_and_waits() -> None:
    broker = FullBroker()
    broker.runs["run-full"] = [Status.RUNNING, Status.FAILED]
    client = LocalBrokerClient(broker, poll_interval=0.001)
    assert client.run_workflow(schema(), {"x": 1}, timeout=5).status is Status.FAILED


def test_the_lease_memory_is_safe_across_threads() -> None:
    broker = SeedOnlyBroker()
    client = LocalBrokerClient(broker)
    broker.ready += [assignment(run=f"run-{i}", token=f"tok-{i}") for i in range(200)]

    def work() -> None:
        while (got := client.get_step("worker-1")) is not None:
            client.report_step(
                "worker-1",
                StepReport(
                    workflow_id="flow",
                    instance_id=got.instance_id,
                    step_name="a",
                    state=Status.SUCCEEDED,
                ),
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.lease_token or "" for r in broker.reports) == sorted(
        f"tok-{i}" for i in range(200)
    )
    assert all(r.lease_token == f"tok-{r.instance_id[4:]}" for r in broker.reports)
