"""AsyncHttpBrokerClient: the same requests, errors and retries, as coroutines."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from fuseline import Status, StepReport
from fuseline import errors as fe
from fuseline.clients import AsyncHttpBrokerClient, Backoff
from fuseline.workflow import StepSchema, WorkflowSchema

FAST = Backoff(retries=2, initial=0.001, maximum=0.001)
SCHEMA = WorkflowSchema(workflow_id="flow", steps=(StepSchema(name="a"),), outputs=("a",))


def run_json(status: str) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "workflow_id": "flow",
        "workflow_version": "1",
        "status": status,
        "created_at": datetime.now(UTC).isoformat(),
    }


class Broker:
    """A tiny scripted broker: answers by route and records requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.wait_answers = ["RUNNING", "SUCCEEDED"]
        self.fail_next_connects = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_next_connects:
            self.fail_next_connects -= 1
            raise httpx.ConnectError("refused")
        path = request.url.path
        if path == "/v1/workers":
            return httpx.Response(201, json={"worker_id": "w1"})
        if path.endswith("/claims"):
            step = {
                "workflow_id": "flow",
                "instance_id": "r1",
                "step_name": "a",
                "lease_token": "t",
            }
            return httpx.Response(200, json={"assignments": [step]})
        if path.endswith("/reports"):
            return httpx.Response(200, json={"next": None})
        if path == "/v1/runs":
            body = {"run_id": "r1", "workflow_id": "flow", "workflow_version": "1"}
            return httpx.Response(201, json=body)
        if path.endswith("/wait"):
            return httpx.Response(200, json=run_json(self.wait_answers.pop(0)))
        if path.endswith("/cancel"):
            error = {"code": "run_finished", "message": "already done", "details": {}}
            return httpx.Response(409, json={"error": error})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "?"}})


def make(broker: Broker) -> AsyncHttpBrokerClient:
    return AsyncHttpBrokerClient(
        "http://broker.test",
        "worker-token-0123456789",
        transport=httpx.MockTransport(broker),
        backoff=FAST,
        max_wait_per_request=0.01,
    )


def test_a_worker_round_trip_with_async_with() -> None:
    broker = Broker()

    async def scenario() -> Status:
        async with make(broker) as client:
            worker_id = await client.register_worker([SCHEMA])
            run_id = await client.dispatch(SCHEMA, {"x": 1})
            step = await client.get_step(worker_id, wait=1)
            assert step is not None
            await client.report_step(
                worker_id,
                StepReport(
                    workflow_id=step.workflow_id,
                    instance_id=step.instance_id,
                    step_name=step.step_name,
                    state=Status.SUCCEEDED,
                    result=2,
                    lease_token=step.lease_token,
                ),
            )
            run = await client.wait_for_run(run_id, timeout=5)
            return run.status

    assert asyncio.run(scenario()) is Status.SUCCEEDED
    paths = [r.url.path for r in broker.requests]
    assert paths == [
        "/v1/workers",
        "/v1/runs",
        "/v1/workers/w1/claims",
        "/v1/workers/w1/reports",
        "/v1/runs/r1/wait",
        "/v1/runs/r1/wait",
    ]
    assert json.loads(broker.requests[3].content)["report"]["result"] == 2


def test_errors_and_retries_match_the_sync_client() -> None:
    broker = Broker()
    broker.fail_next_connects = 2

    async def scenario() -> None:
        async with make(broker) as client:
            assert await client.register_worker([SCHEMA]) == "w1"
            with pytest.raises(fe.RunFinishedError, match="already done"):
                await client.cancel_run("r1")
            broker.fail_next_connects = 5
            with pytest.raises(fe.BrokerUnavailableError):
                await client.list_workers()

    asyncio.run(scenario())
    assert len(broker.requests) == 2 + 1 + 1 + 3


def test_run_workflow_dispatches_then_waits() -> None:
    broker = Broker()

    async def scenario() -> Status:
        async with make(broker) as client:
            return (await client.run_workflow(SCHEMA, {"x": 1}, timeout=5)).status

    assert asyncio.run(scenario()) is Status.SUCCEEDED


def test_run_workflow_takes_the_run_from_a_dispatch_that_waited() -> None:
    class Waiting(Broker):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/runs" and "wait" in request.url.params:
                self.requests.append(request)
                body = {"run_id": "r1", "workflow_id": "flow", "workflow_version": "1"}
                return httpx.Response(201, json={**body, "run": run_json("SUCCEEDED")})
            return super().__call__(request)

    broker = Waiting()

    async def scenario() -> Status:
        async with make(broker) as client:
            return (await client.run_workflow(SCHEMA, {"x": 1}, timeout=5)).status

    assert asyncio.run(scenario()) is Status.SUCCEEDED
    # One request: the dispatch asked to wait (at most the client's cap per request).
    assert [r.url.path for r in broker.requests] == ["/v1/runs"]
    assert float(broker.requests[0].url.params["wait"]) == pytest.approx(0.01)
