"""HttpBrokerClient against a scripted transport: requests sent, errors, retries, long polls."""

# Tokens and lease tokens here are made-up test values, not secrets.
# ruff: noqa: S105, S106

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from fuseline import Status, StepReport
from fuseline import errors as fe
from fuseline.clients import Backoff, HttpBrokerClient
from fuseline.errors import FuselineError
from fuseline.workflow import StepSchema, WorkflowSchema

FAST = Backoff(retries=2, initial=0.001, maximum=0.001)
SCHEMA = WorkflowSchema(workflow_id="flow", steps=(StepSchema(name="a"),), outputs=("a",))
TOKEN = "client-token-0123456789abcdef"


def run_json(run_id: str = "r1", status: str = "SUCCEEDED", **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "workflow_id": "flow",
        "workflow_version": "1",
        "status": status,
        "created_at": datetime.now(UTC).isoformat(),
        **extra,
    }


def error_json(code: str, message: str = "nope", **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


Responder = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in turn and records them."""

    def __init__(self, *answers: Responder | httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def client(script: Script, **options: Any) -> HttpBrokerClient:
    options.setdefault("backoff", FAST)
    return HttpBrokerClient(
        "http://broker.test:8000", TOKEN, transport=httpx.MockTransport(script), **options
    )


# -- requests ----------------------------------------------------------------------


def test_requests_carry_the_token_and_use_the_v1_routes() -> None:
    script = Script(httpx.Response(201, json={"worker_id": "w1"}))
    with client(script) as c:
        assert c.register_worker([SCHEMA], name="w") == "w1"
    sent = script.requests[0]
    assert sent.method == "POST" and sent.url.path == "/v1/workers"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Content-Type"] == "application/json"
    assert script.body() == {"workflows": [SCHEMA.model_dump(mode="json")], "name": "w"}


def test_a_path_prefix_in_the_base_url_is_kept() -> None:
    script = Script(httpx.Response(200, json=run_json()))
    c = HttpBrokerClient("https://proxy.test/fuseline/", transport=httpx.MockTransport(script))
    c.get_run("a/b")
    assert script.requests[0].url.raw_path == b"/fuseline/v1/runs/a%2Fb"


def test_dispatch_always_sends_an_idempotency_key_and_returns_the_run_id() -> None:
    script = Script(
        httpx.Response(201, json={"run_id": "r9", "workflow_id": "flow", "workflow_version": "1"})
    )
    with client(script) as c:
        assert c.dispatch_workflow(SCHEMA, {"x": 1}) == "r9"
        assert c.dispatch("flow", {"x": 2}, version="1", idempotency_key="mine") == "r9"
    first, second = script.requests
    assert first.headers["Idempotency-Key"].startswith("auto-")
    assert json.loads(first.content)["workflow"]["workflow_id"] == "flow"
    assert second.headers["Idempotency-Key"] == "mine"
    assert json.loads(second.content) == {
        "workflow_id": "flow",
        "version": "1",
        "inputs": {"x": 2},
        "idempotency_key": None,
    }


LEASED = StepReport(
    workflow_id="flow",
    instance_id="r1",
    step_name="a",
    state=Status.SUCCEEDED,
    result={"when": datetime(2024, 1, 2, tzinfo=UTC)},
    lease_token="lease",
)


def test_reports_send_json_results_and_refuse_what_json_cannot_carry() -> None:
    script = Script(httpx.Response(200, json={"next": None}))
    report = LEASED
    with client(script) as c:
        assert c.report_step("w1", report) is None
        assert script.body()["report"]["result"] == {"when": "2024-01-02T00:00:00Z"}
        bad = report.model_copy(update={"result": float("nan")})
        with pytest.raises(fe.ResultNotSerializableError):
            c.report_step("w1", bad)
    assert len(script.requests) == 1


def test_a_batch_of_reports_is_one_request_with_an_outcome_per_report() -> None:
    answer = {
        "outcomes": [
            {"instance_id": "r1", "step_name": "a", "code": None},
            {
                "instance_id": "r1",
                "step_name": "b",
                "code": "lease_conflict",
                "message": "not yours",
                "details": {"step_name": "b"},
            },
        ],
        "assignments": [{"workflow_id": "flow", "instance_id": "r2", "step_name": "a"}],
    }
    script = Script(httpx.Response(200, json=answer))
    second = LEASED.model_copy(update={"step_name": "b"})
    with client(script) as c:
        reply = c.report_steps("w1", [LEASED, second], claim=2)
    assert len(script.requests) == 1
    assert script.requests[0].url.path == "/v1/workers/w1/reports/batch"
    sent = script.body()
    assert sent["claim"] == 2 and [r["step_name"] for r in sent["reports"]] == ["a", "b"]
    assert sent["reports"][0]["result"] == {"when": "2024-01-02T00:00:00Z"}
    assert [o.accepted for o in reply.outcomes] == [True, False]
    refusal = reply.outcomes[1].error()
    assert isinstance(refusal, fe.LeaseConflictError) and refusal.details == {"step_name": "b"}
    assert [a.instance_id for a in reply.assignments] == ["r2"]


def test_a_batch_with_a_report_without_lease_is_not_repeated() -> None:
    script = Script(httpx.Response(503, json=error_json("unavailable")))
    unleased = LEASED.model_copy(update={"lease_token": None})
    with client(script) as c, pytest.raises(fe.BrokerUnavailableError):
        c.report_steps("w1", [LEASED, unleased])
    assert len(script.requests) == 1


def test_list_runs_sends_only_the_filters_given() -> None:
    script = Script(httpx.Response(200, json={"items": [], "next_cursor": None}))
    with client(script) as c:
        c.list_runs(status=Status.FAILED, limit=5)
    assert dict(script.requests[0].url.params) == {"limit": "5", "status": "FAILED"}


# -- errors ------------------------------------------------------------------------


def every_error_class() -> list[type[FuselineError]]:
    found, pending = [], [FuselineError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.code)
def test_error_codes_come_back_as_the_same_classes(cls: type[FuselineError]) -> None:
    script = Script(httpx.Response(409, json=error_json(cls.code, "told you", run_id="r1")))
    with client(script, retries=0) as c, pytest.raises(cls) as caught:
        c.get_run("r1")
    assert type(caught.value) is cls
    assert caught.value.message == "told you"
    assert caught.value.details == {"run_id": "r1"}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, fe.AuthenticationError),
        (403, fe.PermissionDeniedError),
        (404, fe.NotFoundError),
        (413, fe.PayloadTooLargeError),
        (418, FuselineError),
        (502, fe.BrokerUnavailableError),
    ],
)
def test_non_json_errors_are_judged_by_their_status(
    status: int, expected: type[FuselineError]
) -> None:
    script = Script(httpx.Response(status, text="<html>proxy says no</html>"))
    with client(script, retries=0) as c, pytest.raises(expected) as caught:
        c.cancel_run("r1")
    assert type(caught.value) is expected
    assert "proxy says no" in caught.value.message


def test_connection_failures_become_broker_unavailable_without_the_token() -> None:
    script = Script(httpx.ConnectError("refused"))
    c = client(script)
    with pytest.raises(fe.BrokerUnavailableError) as caught:
        c.list_workers()
    assert len(script.requests) == 3  # the first try and two retries
    assert TOKEN not in str(caught.value) and TOKEN not in repr(c)
    assert "broker.test" in str(caught.value)


def test_an_unreadable_success_body_is_a_clear_error() -> None:
    script = Script(httpx.Response(200, json={"unexpected": True}))
    with client(script) as c, pytest.raises(FuselineError, match="same version"):
        c.get_run("r1")


# -- retries -----------------------------------------------------------------------


def test_any_call_is_retried_when_the_connection_could_not_be_opened() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json={"assignments": []}))
    with client(script) as c:
        assert c.get_steps("w1") == []
    assert len(script.requests) == 2


def test_a_claim_that_may_have_reached_the_broker_is_not_repeated() -> None:
    script = Script(httpx.ReadError("reset"), httpx.Response(200, json={"assignments": []}))
    with client(script) as c, pytest.raises(fe.BrokerUnavailableError):
        c.get_steps("w1")
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.get_run("r1"), id="get_run"),
        pytest.param(lambda c: c.keep_alive("w1"), id="heartbeat"),
        pytest.param(lambda c: c.dispatch_workflow(SCHEMA), id="dispatch"),
        pytest.param(
            lambda c: c.report_step(
                "w1",
                StepReport(
                    workflow_id="flow",
                    instance_id="r1",
                    step_name="a",
                    state=Status.SUCCEEDED,
                    lease_token="lease",
                ),
            ),
            id="report-with-lease",
        ),
        pytest.param(
            lambda c: c.report_steps("w1", [LEASED, LEASED.model_copy(update={"step_name": "b"})]),
            id="report-batch-with-leases",
        ),
    ],
)
def test_calls_safe_to_repeat_survive_lost_responses_and_503(
    call: Callable[[HttpBrokerClient], Any],
) -> None:
    def success(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/heartbeat"):
            return httpx.Response(200, json={})
        if path.endswith("/reports"):
            return httpx.Response(200, json={"next": None})
        if path.endswith("/reports/batch"):
            return httpx.Response(200, json={"outcomes": [], "assignments": []})
        if path == "/v1/runs":
            body = {"run_id": "r1", "workflow_id": "flow", "workflow_version": "1"}
            return httpx.Response(201, json=body)
        return httpx.Response(200, json=run_json())

    script = Script(
        httpx.ReadTimeout("slow"),
        httpx.Response(503, json=error_json("unavailable"), headers={"Retry-After": "0"}),
        success,
    )
    with client(script) as c:
        call(c)
    assert len(script.requests) == 3
    keys = {r.headers.get("Idempotency-Key") for r in script.requests}
    assert len(keys) == 1  # a retried dispatch repeats its key


def test_a_report_without_lease_token_and_a_cancel_are_not_repeated() -> None:
    script = Script(httpx.Response(503, json=error_json("unavailable")))
    with client(script) as c:
        with pytest.raises(fe.BrokerUnavailableError):
            c.cancel_run("r1")
        with pytest.raises(fe.BrokerUnavailableError):
            c.report_step(
                "w1",
                StepReport(
                    workflow_id="flow", instance_id="r1", step_name="a", state=Status.FAILED
                ),
            )
    assert len(script.requests) == 2


# -- long polls --------------------------------------------------------------------


def test_long_waits_are_split_into_requests_the_server_may_hold() -> None:
    script = Script(httpx.Response(200, json={"assignments": []}))
    with client(script, max_wait_per_request=0.05) as c:
        assert c.get_step("w1", wait=0.12) is None
    asked = [script.body(i)["wait"] for i in range(len(script.requests))]
    assert len(asked) >= 3
    assert all(0 <= wait <= 0.05 for wait in asked)
    read_timeouts = [r.extensions["timeout"]["read"] for r in script.requests]
    assert all(t >= 10.0 for t in read_timeouts)


def test_claims_stop_at_the_first_assignment() -> None:
    step = {"workflow_id": "flow", "instance_id": "r1", "step_name": "a", "lease_token": "t"}
    script = Script(
        httpx.Response(200, json={"assignments": []}),
        httpx.Response(200, json={"assignments": [step]}),
    )
    with client(script, max_wait_per_request=0.01) as c:
        got = c.get_step("w1", wait=30)
    assert got is not None and got.lease_token == "t"
    assert len(script.requests) == 2


def test_wait_for_run_returns_the_finished_run_or_times_out() -> None:
    script = Script(
        httpx.Response(200, json=run_json(status="RUNNING")),
        httpx.Response(200, json=run_json(status="SUCCEEDED", result={"a": 1})),
    )
    with client(script, max_wait_per_request=0.01) as c:
        run = c.wait_for_run("r1", timeout=30)
    assert run.status is Status.SUCCEEDED and run.result == {"a": 1}
    assert script.requests[0].url.path == "/v1/runs/r1/wait"

    running = Script(httpx.Response(200, json=run_json(status="RUNNING")))
    with client(running) as c, pytest.raises(fe.WaitTimeoutError) as caught:
        c.wait_for_run("r1", timeout=0.05)
    assert caught.value.details == {"run_id": "r1", "status": "RUNNING"}


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    script = Script(httpx.Response(200, json={}))
    with client(script) as c:
        with pytest.raises(fe.InvalidInputError):
            c.get_steps("w1", max_steps=0)
        with pytest.raises(fe.InvalidInputError):
            c.get_step("w1", wait=-1)
        with pytest.raises(fe.InvalidInputError):
            c.wait_for_run("r1", timeout=float("nan"))
    assert script.requests == []
    with pytest.raises(fe.InvalidInputError):
        HttpBrokerClient("ftp://broker")
    with pytest.raises(fe.InvalidInputError):
        HttpBrokerClient("http://broker", "has space")
