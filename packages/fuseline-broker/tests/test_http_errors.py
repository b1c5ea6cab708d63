"""The error matrix over real HTTP: every malformed or impossible request is a 4xx
with a JSON error body and a stable code, and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, RunningServer, serving

from fuseline.clients.wire import ErrorBody

LIMITS = ("--max-body-bytes", "65536", "--max-result-bytes", "2048", "--max-schema-steps", "5")


def steps(*names: str) -> list[dict[str, Any]]:
    return [{"name": name} for name in names]


SCHEMA = {
    "workflow_id": "errors",
    "steps": steps("first", "second"),
    "edges": [{"source": "first", "target": "second"}],
    "outputs": ["second"],
}


@dataclass
class World:
    """A server with a registered worker, one run and one step leased to the worker."""

    server: RunningServer
    worker_id: str
    run_id: str
    lease_token: str

    def call(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        token: str | None = WORKER_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        content = json.dumps(body).encode() if isinstance(body, dict) else body
        return httpx.request(
            method, f"{self.server.url}{path}", content=content, headers=sent, timeout=30
        )

    def snapshot(self) -> Any:
        """Everything a client can read; last-seen times move with any worker call."""
        runs = self.call("GET", "/v1/runs?limit=500", token=CLIENT_TOKEN).json()
        run = self.call("GET", f"/v1/runs/{self.run_id}", token=CLIENT_TOKEN).json()
        workers = self.call("GET", "/v1/workers", token=CLIENT_TOKEN).json()
        for worker in workers["items"]:
            worker.pop("last_seen_at")
        workflows = self.call("GET", "/v1/workflows", token=CLIENT_TOKEN).json()
        return runs, run, workers, workflows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("errors")
    with serving(tmp, *LIMITS, database_url=f"sqlite:///{tmp / 'broker.sqlite3'}") as server:
        auth = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        worker_id = httpx.post(
            f"{server.url}/v1/workers", json={"workflows": [SCHEMA]}, headers=auth
        ).json()["worker_id"]
        run_id = httpx.post(
            f"{server.url}/v1/runs",
            json={"workflow_id": "errors", "inputs": {"x": 1}},
            headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        ).json()["run_id"]
        claimed = httpx.post(
            f"{server.url}/v1/workers/{worker_id}/claims", json={"wait": 5}, headers=auth
        ).json()["assignments"]
        assert [a["step_name"] for a in claimed] == ["first"]
        yield World(server, worker_id, run_id, claimed[0]["lease_token"])


def report(world: World, **changes: Any) -> dict[str, Any]:
    body = {
        "workflow_id": "errors",
        "instance_id": world.run_id,
        "step_name": "first",
        "state": "SUCCEEDED",
        "result": 1,
        "lease_token": world.lease_token,
        **changes,
    }
    return {"report": body}


def raw_report(world: World, result_json: str) -> bytes:
    template = json.dumps(report(world, result="@@"))
    return template.replace('"@@"', result_json).encode()


# (name, build request arguments from the world, expected status, expected code)
CASES: list[tuple[str, Any, int, str]] = [
    ("not JSON", lambda w: ("POST", "/v1/workers", b"{not json"), 400, "invalid_input"),
    ("not an object", lambda w: ("POST", "/v1/workers", b"[1, 2]"), 400, "invalid_input"),
    ("empty body", lambda w: ("POST", "/v1/workers", b""), 400, "invalid_input"),
    ("not UTF-8", lambda w: ("POST", "/v1/workers", b"\xff\xfe{}"), 400, "invalid_input"),
    (
        "wrong type",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/claims", {"max_steps": "3"}),
        422,
        "invalid_input",
    ),
    (
        "integer written as a float",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/claims", {"max_steps": 2.5}),
        422,
        "invalid_input",
    ),
    (
        "unknown field",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/claims", {"max_steps": 1, "bogus": 1}),
        422,
        "invalid_input",
    ),
    (
        "wait beyond the protocol's limit",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/claims", {"wait": 61}),
        422,
        "invalid_input",
    ),
    (
        "NaN in a result",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", raw_report(w, "NaN")),
        400,
        "invalid_input",
    ),
    (
        "Infinity in a result",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", raw_report(w, "-Infinity")),
        400,
        "invalid_input",
    ),
    (
        "NUL in a result string",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", raw_report(w, '"a\\u0000b"')),
        400,
        "invalid_input",
    ),
    (
        "NUL in a key",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", raw_report(w, '{"k\\u0000": 1}')),
        400,
        "invalid_input",
    ),
    (
        "nested too deeply",
        lambda w: (
            "POST",
            f"/v1/workers/{w.worker_id}/reports",
            raw_report(w, "[" * 20000 + "]" * 20000),
        ),
        400,
        "invalid_input",
    ),
    (
        "unknown step state",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", report(w, state="DONE")),
        422,
        "invalid_input",
    ),
    (
        "body over the limit",
        lambda w: ("POST", "/v1/workers", b'{"x": "' + b"a" * 70000 + b'"}'),
        413,
        "payload_too_large",
    ),
    (
        "result over the limit",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", report(w, result="r" * 3000)),
        413,
        "payload_too_large",
    ),
    (
        # 601 characters of numbers that are 2,281 bytes of JSON once parsed.
        "result whose numbers grow over the limit",
        lambda w: (
            "POST",
            f"/v1/workers/{w.worker_id}/reports",
            raw_report(w, "[" + ",".join(["1e15"] * 120) + "]"),
        ),
        413,
        "payload_too_large",
    ),
    (
        "schema with too many steps",
        lambda w: (
            "POST",
            "/v1/workers",
            {"workflows": [{"workflow_id": "big", "steps": steps(*"abcdef"), "outputs": ["a"]}]},
        ),
        413,
        "payload_too_large",
    ),
    (
        "workflow with a cycle",
        lambda w: (
            "POST",
            "/v1/workers",
            {
                "workflows": [
                    {
                        "workflow_id": "loop",
                        "steps": steps("a", "b"),
                        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
                        "outputs": ["b"],
                    }
                ]
            },
        ),
        422,
        "workflow_cycle",
    ),
    (
        "same key, different graph",
        lambda w: (
            "POST",
            "/v1/workers",
            {"workflows": [{**SCHEMA, "edges": [], "outputs": ["first"]}]},
        ),
        409,
        "schema_conflict",
    ),
    (
        "unknown worker",
        lambda w: ("POST", "/v1/workers/nobody/claims", {}),
        404,
        "worker_not_found",
    ),
    (
        "stale lease",
        lambda w: (
            "POST",
            f"/v1/workers/{w.worker_id}/reports",
            report(w, lease_token="not-" + w.lease_token),
        ),
        409,
        "lease_conflict",
    ),
    (
        "report without a lease",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports", report(w, lease_token=None)),
        409,
        "lease_conflict",
    ),
    (
        "empty batch of reports",
        lambda w: ("POST", f"/v1/workers/{w.worker_id}/reports/batch", {"reports": []}),
        422,
        "invalid_input",
    ),
    (
        "batch claiming too many steps",
        lambda w: (
            "POST",
            f"/v1/workers/{w.worker_id}/reports/batch",
            {"reports": [report(w)["report"]], "claim": 101},
        ),
        422,
        "invalid_input",
    ),
    (
        "batch from an unknown worker",
        lambda w: ("POST", "/v1/workers/nobody/reports/batch", {"reports": [report(w)["report"]]}),
        404,
        "worker_not_found",
    ),
    (
        "unknown worker heartbeat",
        lambda w: ("POST", "/v1/workers/nobody/heartbeat", {}),
        404,
        "worker_not_found",
    ),
]

CLIENT_CASES: list[tuple[str, Any, int, str]] = [
    (
        "dispatch of an unknown workflow",
        lambda w: ("POST", "/v1/runs", {"workflow_id": "missing"}),
        404,
        "workflow_not_found",
    ),
    (
        "dispatch naming a schema and an id",
        lambda w: ("POST", "/v1/runs", {"workflow_id": "errors", "workflow": SCHEMA}),
        422,
        "invalid_input",
    ),
    (
        "dispatch naming nothing",
        lambda w: ("POST", "/v1/runs", {"inputs": {}}),
        422,
        "invalid_input",
    ),
    (
        "inputs over the limit",
        lambda w: ("POST", "/v1/runs", {"workflow_id": "errors", "inputs": {"x": "i" * 3000}}),
        413,
        "payload_too_large",
    ),
    (
        "inputs that are not an object",
        lambda w: ("POST", "/v1/runs", {"workflow_id": "errors", "inputs": [1]}),
        422,
        "invalid_input",
    ),
    ("unknown run", lambda w: ("GET", "/v1/runs/nope", None), 404, "run_not_found"),
    ("NUL in a run id", lambda w: ("GET", "/v1/runs/a%00b", None), 404, "run_not_found"),
    (
        "cancel of an unknown run",
        lambda w: ("POST", "/v1/runs/nope/cancel", None),
        404,
        "run_not_found",
    ),
    (
        "wait for an unknown run",
        lambda w: ("GET", "/v1/runs/nope/wait?timeout=0", None),
        404,
        "run_not_found",
    ),
    (
        "negative wait",
        lambda w: ("GET", f"/v1/runs/{w.run_id}/wait?timeout=-1", None),
        422,
        "invalid_input",
    ),
    (
        "NaN wait",
        lambda w: ("GET", f"/v1/runs/{w.run_id}/wait?timeout=nan", None),
        422,
        "invalid_input",
    ),
    ("limit zero", lambda w: ("GET", "/v1/runs?limit=0", None), 422, "invalid_input"),
    ("limit not a number", lambda w: ("GET", "/v1/runs?limit=ten", None), 422, "invalid_input"),
    ("unknown status", lambda w: ("GET", "/v1/runs?status=DONE", None), 422, "invalid_input"),
    (
        "unknown query parameter",
        lambda w: ("GET", "/v1/runs?colour=red", None),
        422,
        "invalid_input",
    ),
    (
        "repeated query parameter",
        lambda w: ("GET", "/v1/runs?limit=1&limit=2", None),
        422,
        "invalid_input",
    ),
    (
        "query on a route without one",
        lambda w: ("GET", "/v1/workers?x=1", None),
        422,
        "invalid_input",
    ),
    (
        "unknown workflow version",
        lambda w: ("GET", "/v1/workflows/errors/versions/9", None),
        404,
        "workflow_not_found",
    ),
    ("unknown route", lambda w: ("GET", "/v2/runs", None), 404, "not_found"),
    ("wrong method", lambda w: ("DELETE", f"/v1/runs/{w.run_id}", None), 405, "invalid_input"),
]


def check_error(response: httpx.Response, status: int, code: str) -> ErrorBody:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == code
    assert body.error.message
    return body


@pytest.mark.parametrize(
    ("build", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_worker_requests_that_cannot_work_change_nothing(
    world: World, build: Any, status: int, code: str
) -> None:
    before = world.snapshot()
    check_error(world.call(*build(world)), status, code)
    assert world.snapshot() == before


@pytest.mark.parametrize(
    ("build", "status", "code"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES]
)
def test_client_requests_that_cannot_work_change_nothing(
    world: World, build: Any, status: int, code: str
) -> None:
    before = world.snapshot()
    check_error(world.call(*build(world), token=CLIENT_TOKEN), status, code)
    assert world.snapshot() == before


def test_a_bad_idempotency_header_is_refused(world: World) -> None:
    before = world.snapshot()
    for key in ("has space", "x" * 201, "tab\there"):
        response = world.call(
            "POST",
            "/v1/runs",
            {"workflow_id": "errors"},
            token=CLIENT_TOKEN,
            headers={"Idempotency-Key": key},
        )
        check_error(response, 422, "invalid_input")
    response = world.call(
        "POST",
        "/v1/runs",
        {"workflow_id": "errors", "idempotency_key": "one"},
        token=CLIENT_TOKEN,
        headers={"Idempotency-Key": "two"},
    )
    check_error(response, 422, "invalid_input")
    assert world.snapshot() == before


def test_the_405_names_the_allowed_methods(world: World) -> None:
    response = world.call("PUT", "/v1/runs", b"{}", token=CLIENT_TOKEN)
    check_error(response, 405, "invalid_input")
    assert response.headers["allow"] == "GET, POST"


def test_validation_errors_point_at_the_field(world: World) -> None:
    response = world.call(
        "POST", f"/v1/workers/{world.worker_id}/claims", {"max_steps": 1000}, token=WORKER_TOKEN
    )
    body = check_error(response, 422, "invalid_input")
    assert body.error.details["errors"][0]["loc"] == ["max_steps"]
    assert "max_steps" in body.error.message


def test_refused_reports_of_a_batch_say_why_and_change_nothing(world: World) -> None:
    before = world.snapshot()
    refused = [
        report(world, lease_token=None)["report"],
        report(world, lease_token="not-" + world.lease_token)["report"],
        report(world, result="r" * 3000)["report"],
        report(world, step_name="nope")["report"],
    ]
    response = world.call(
        "POST", f"/v1/workers/{world.worker_id}/reports/batch", {"reports": refused, "claim": 4}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [o["code"] for o in answer["outcomes"]] == [
        "lease_conflict",
        "lease_conflict",
        "payload_too_large",
        "step_not_found",
    ]
    assert all(o["message"] for o in answer["outcomes"])
    assert answer["assignments"] == []
    assert world.snapshot() == before


def test_no_request_of_the_matrix_hit_an_unexpected_error(world: World) -> None:
    log = world.server.log()
    assert "failed unexpectedly" not in log
    assert "Traceback" not in log
