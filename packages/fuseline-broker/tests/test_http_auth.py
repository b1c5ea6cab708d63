"""Tokens and roles over real HTTP, start-up refusals, and secrets kept out of logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_server_support import (
    CLIENT_TOKEN,
    WORKER_TOKEN,
    RunningServer,
    launch,
    serving,
)

SCHEMA = {"workflow_id": "auth", "steps": [{"name": "only"}], "outputs": ["only"]}

WORKER_ROUTES = [
    ("POST", "/v1/workers", {"workflows": [SCHEMA]}),
    ("POST", "/v1/workers/{worker_id}/claims", {}),
    ("POST", "/v1/workers/{worker_id}/heartbeat", {}),
    (
        "POST",
        "/v1/workers/{worker_id}/reports",
        {
            "report": {
                "workflow_id": "auth",
                "instance_id": "{run_id}",
                "step_name": "only",
                "state": "SUCCEEDED",
            }
        },
    ),
    (
        "POST",
        "/v1/workers/{worker_id}/reports/batch",
        {
            "reports": [
                {
                    "workflow_id": "auth",
                    "instance_id": "{run_id}",
                    "step_name": "only",
                    "state": "SUCCEEDED",
                }
            ]
        },
    ),
]
CLIENT_ROUTES = [
    ("POST", "/v1/runs", {"workflow_id": "auth"}),
    ("GET", "/v1/runs", None),
    ("GET", "/v1/runs/{run_id}", None),
    ("GET", "/v1/runs/{run_id}/wait?timeout=0", None),
    ("POST", "/v1/runs/{run_id}/cancel", None),
]
SHARED_ROUTES = [
    ("GET", "/v1/workflows", None),
    ("GET", "/v1/workflows/auth/versions/1", None),
    ("GET", "/v1/workers", None),
]


class Tokened:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        client = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        self.worker_id = httpx.post(
            f"{server.url}/v1/workers", json={"workflows": [SCHEMA]}, headers=worker
        ).json()["worker_id"]
        self.run_id = httpx.post(
            f"{server.url}/v1/runs", json={"workflow_id": "auth"}, headers=client
        ).json()["run_id"]

    def call(self, route: tuple[str, str, Any], authorization: str | None) -> httpx.Response:
        method, path, body = route
        path = path.format(worker_id=self.worker_id, run_id=self.run_id)
        if body is not None:
            body = _fill(body, self.run_id)
        headers = {} if authorization is None else {"Authorization": authorization}
        return httpx.request(
            method, f"{self.server.url}{path}", json=body, headers=headers, timeout=30
        )


def _fill(value: Any, run_id: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, run_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, run_id) for v in value]
    return run_id if value == "{run_id}" else value


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokened]:
    tmp = tmp_path_factory.mktemp("auth")
    with serving(tmp, database_url=f"sqlite:///{tmp / 'auth.sqlite3'}") as server:
        yield Tokened(server)


def route_id(route: tuple[str, str, Any]) -> str:
    return f"{route[0]} {route[1]}"


ALL_ROUTES = WORKER_ROUTES + CLIENT_ROUTES + SHARED_ROUTES


@pytest.mark.parametrize("route", ALL_ROUTES, ids=route_id)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong-token-0123456789abcdef", f"Basic {WORKER_TOKEN}"],
    ids=["none", "empty", "wrong", "not-bearer"],
)
def test_every_route_but_health_needs_a_valid_token(
    tokened: Tokened, route: tuple[str, str, Any], authorization: str | None
) -> None:
    response = tokened.call(route, authorization)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("route", CLIENT_ROUTES, ids=route_id)
def test_a_worker_token_cannot_dispatch_read_or_cancel_runs(
    tokened: Tokened, route: tuple[str, str, Any]
) -> None:
    response = tokened.call(route, f"Bearer {WORKER_TOKEN}")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert WORKER_TOKEN not in response.text


@pytest.mark.parametrize("route", WORKER_ROUTES, ids=route_id)
def test_a_client_token_cannot_claim_report_or_register(
    tokened: Tokened, route: tuple[str, str, Any]
) -> None:
    response = tokened.call(route, f"Bearer {CLIENT_TOKEN}")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("route", SHARED_ROUTES, ids=route_id)
@pytest.mark.parametrize("token", [WORKER_TOKEN, CLIENT_TOKEN], ids=["worker", "client"])
def test_both_roles_may_list_workflows_and_workers(
    tokened: Tokened, route: tuple[str, str, Any], token: str
) -> None:
    assert tokened.call(route, f"Bearer {token}").status_code == 200


def test_health_and_the_api_description_need_no_token(tokened: Tokened) -> None:
    health = httpx.get(f"{tokened.server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    document = httpx.get(f"{tokened.server.url}/openapi.json")
    assert document.status_code == 200
    assert document.json()["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    docs = httpx.get(f"{tokened.server.url}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_tokens_never_reach_the_log(tokened: Tokened) -> None:
    log = tokened.server.log()
    assert WORKER_TOKEN not in log and CLIENT_TOKEN not in log
    assert "wrong-token" not in log


# -- start-up ------------------------------------------------------------------------


def finished(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process, log_path, _ = launch(tmp_path, *args, env=env)
    code = process.wait(timeout=60)
    return code, log_path.read_text()


def test_listening_beyond_loopback_without_tokens_is_refused(tmp_path: Path) -> None:
    everywhere = "0.0.0.0"  # noqa: S104 - the test checks that this is refused
    code, output = finished(tmp_path, "--host", everywhere, "--database-url", "memory://")
    assert code == 2
    assert "Refusing to listen on 0.0.0.0 without tokens" in output
    assert "--allow-unauthenticated-remote" in output


def test_short_tokens_are_refused(tmp_path: Path) -> None:
    code, output = finished(tmp_path, env={"FUSELINE_CLIENT_TOKEN": "tiny-secret"})
    assert code == 2 and "shorter than 16" in output
    assert "tiny-secret" not in output


def test_the_memory_backend_refuses_several_processes(tmp_path: Path) -> None:
    code, output = finished(tmp_path, "--database-url", "memory://", "--processes", "2")
    assert code == 2 and "one process" in output


def test_a_database_password_never_reaches_the_log(tmp_path: Path) -> None:
    # Nothing listens on port 9: the broker cannot start, and says so without the password.
    url = "postgresql://fuseline:hunter2-secret@127.0.0.1:9/fuseline?password=also-secret"
    code, output = finished(tmp_path, env={"DATABASE_URL": url})
    assert code == 1
    assert "fuseline@127.0.0.1:9/fuseline" in output
    assert "hunter2-secret" not in output and "also-secret" not in output


def test_without_tokens_it_warns_and_serves_loopback_only(tmp_path: Path, http_server: Any) -> None:
    server = http_server("--database-url", "memory://", tokens=False)
    assert "No tokens are configured" in server.log()
    assert "127.0.0.1" in server.log()
    # Without tokens every route is open, on this machine only.
    assert httpx.get(f"{server.url}/v1/workers").status_code == 200
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert "securitySchemes" not in document["components"]
