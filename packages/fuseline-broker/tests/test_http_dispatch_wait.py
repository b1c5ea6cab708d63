"""``POST /v1/runs?wait=``: start a run and get its result in the same request.

``HttpBrokerClient.run_workflow`` uses it, so a short run costs one request
instead of a dispatch and a wait. Real server process, real worker engine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, RunningServer

from fuseline import Status, Step, Workflow
from fuseline.clients import HttpBrokerClient
from fuseline.clients._http_calls import Call
from fuseline.errors import WaitTimeoutError


class Double(Step):
    def run_step(self, n: int) -> int:
        return 2 * n


def doubling(workflow_id: str) -> Workflow:
    return Workflow(outputs=[Double()], workflow_id=workflow_id)


@pytest.fixture
def serving(server: RunningServer) -> Iterator[Workflow]:
    """A worker engine serving ``doubling("wait-doubling")`` in a thread."""
    engine_module = pytest.importorskip("fuseline.worker")
    workflow = doubling("wait-doubling")
    with HttpBrokerClient(server.url, WORKER_TOKEN) as worker:
        engine = engine_module.ProcessEngine(worker, [workflow], poll_wait=1.0)
        thread = threading.Thread(
            target=engine.serve, kwargs={"handle_signals": False}, daemon=True
        )
        thread.start()
        try:
            yield workflow
        finally:
            engine.stop()
            thread.join(timeout=15)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENT_TOKEN}"}


def test_a_dispatch_that_waits_answers_with_the_finished_run(
    server: RunningServer, serving: Workflow
) -> None:
    body = {"workflow": serving.to_schema().model_dump(mode="json"), "inputs": {"n": 21}}
    answer = httpx.post(
        f"{server.url}/v1/runs", params={"wait": 20}, json=body, headers=_headers(), timeout=30
    )
    assert answer.status_code == 201
    created = answer.json()
    assert created["run"]["run_id"] == created["run_id"]
    assert created["run"]["status"] == "SUCCEEDED"
    assert created["run"]["result"] == {"Double": 42}
    assert answer.headers["Location"] == f"/v1/runs/{created['run_id']}"


def test_run_workflow_gets_its_result_in_one_request(
    server: RunningServer, serving: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    with HttpBrokerClient(server.url, CLIENT_TOKEN) as app:
        execute = app._execute

        def counted(call: Call[Any]) -> Any:
            sent.append(f"{call.method} {call.path}")
            return execute(call)

        monkeypatch.setattr(app, "_execute", counted)
        run = app.run_workflow(serving, {"n": 5}, timeout=30)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"Double": 10}
    assert sent == ["POST /v1/runs"]


def test_run_workflow_times_out_with_the_run_still_dispatched(server: RunningServer) -> None:
    idle = doubling("wait-no-worker")  # nobody runs it
    with HttpBrokerClient(server.url, CLIENT_TOKEN) as app:
        with pytest.raises(WaitTimeoutError) as caught:
            app.run_workflow(idle, {"n": 1}, timeout=0.5)
        assert "after 0.5 seconds" in str(caught.value)  # the caller's timeout, whole
        run_id = caught.value.details["run_id"]
        assert app.get_run(run_id).status is Status.PENDING
        # No wait at all: the dispatch answers at once, and the error still names the run.
        with pytest.raises(WaitTimeoutError) as again:
            app.run_workflow(idle, {"n": 2}, timeout=0)
        assert again.value.details["run_id"] != run_id
        assert app.get_run(again.value.details["run_id"]).status is Status.PENDING


@pytest.mark.parametrize("wait", ["-1", "abc", "100000"])
def test_a_bad_wait_is_refused_and_starts_nothing(server: RunningServer, wait: str) -> None:
    body = {"workflow": doubling("wait-refused").to_schema().model_dump(mode="json")}
    answer = httpx.post(
        f"{server.url}/v1/runs", params={"wait": wait}, json=body, headers=_headers(), timeout=10
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_input"
    assert "wait" in error["message"]
    with HttpBrokerClient(server.url, CLIENT_TOKEN) as app:
        assert app.list_runs().items == []
