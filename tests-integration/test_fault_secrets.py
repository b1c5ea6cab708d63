"""Secrets stay secret: failed starts, database outages and refused requests never show them.

Fault case 9 of the reliability suite (docs/reliability.md). The database
password and the tokens are long recognizable strings; every log line and
every answer the broker produced is searched for them, also in URL-encoded
form.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import fault_flows as flows
import httpx
import psycopg
import pytest
from fault_checker import Figures, write_figures
from fault_harness import CLIENT_TOKEN, WORKER_TOKEN, free_port, start_server, wait_until
from http_server_support import launch

PASSWORD = "pw-" + secrets.token_hex(12) + "-do-not-log"
SHORT_TOKEN = "tiny-" + secrets.token_hex(3)  # under the 16 characters a token needs
STRANGER_TOKEN = "stranger-" + secrets.token_hex(16)
SECRETS = (PASSWORD, WORKER_TOKEN, CLIENT_TOKEN, SHORT_TOKEN, STRANGER_TOKEN)


def raw(value: object) -> bytes:
    return json.dumps(value).encode()


def leaked(text: str) -> list[str]:
    """The secrets (or their URL-encoded forms) that appear in ``text``."""
    return [s for s in SECRETS if s in text or quote(s, safe="") in text]


def failed_starts(
    folder: Path, starts: dict[str, tuple[tuple[str, ...], dict[str, str]]]
) -> dict[str, tuple[int, str]]:
    """Start servers that must refuse to start, all at once; return exit status and output."""
    launched = {name: launch(folder, *args, env=env) for name, (args, env) in starts.items()}
    outcomes = {}
    for name, (process, log_path, _) in launched.items():
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"{name}: the server started although it should not have")
        outcomes[name] = (code, log_path.read_text(errors="replace"))
    return outcomes


def report(
    test: str, backend: str, began: float, checked: dict[str, str], problems: list[str]
) -> None:
    write_figures(
        Figures(
            test=test,
            backend=backend,
            seconds=round(time.monotonic() - began, 2),
            problems=problems,
            extra={
                "texts_searched": len(checked),
                "characters_searched": sum(map(len, checked.values())),
            },
        )
    )


QUICK_STARTS = ("unknown scheme", "token too short", "invalid setting", "beyond loopback")


@pytest.mark.parametrize(
    "slow", [False, pytest.param(True, marks=pytest.mark.chaos)], ids=["settings", "database"]
)
def test_fault_9_failed_starts_show_no_secret(tmp_path: Path, slow: bool) -> None:
    """Settings errors stop the server at once; an unreachable database after a timeout."""
    began = time.monotonic()
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    tokens = {"FUSELINE_WORKER_TOKEN": WORKER_TOKEN, "FUSELINE_CLIENT_TOKEN": CLIENT_TOKEN}
    starts = {
        "database unreachable": (
            (),
            {"DATABASE_URL": f"postgresql://fuseline:{PASSWORD}@{nowhere}/db", **tokens},
        ),
        "password in the query": (
            (),
            {"DATABASE_URL": f"postgresql://fuseline@{nowhere}/db?password={PASSWORD}", **tokens},
        ),
        "unparsable port": (
            (),
            {"DATABASE_URL": f"postgresql://fuseline:{PASSWORD}@127.0.0.1:port/db", **tokens},
        ),
        "unknown scheme": (
            (),
            {"DATABASE_URL": f"mysql://fuseline:{PASSWORD}@{nowhere}/db", **tokens},
        ),
        "token too short": (
            (),
            {"FUSELINE_WORKER_TOKEN": SHORT_TOKEN, "FUSELINE_CLIENT_TOKEN": CLIENT_TOKEN},
        ),
        "invalid setting": (
            ("--max-wait", "999"),
            {"DATABASE_URL": f"postgresql://fuseline:{PASSWORD}@{nowhere}/db", **tokens},
        ),
        "beyond loopback": (
            ("--host", "0.0.0.0"),  # noqa: S104 - refused: no token
            {"DATABASE_URL": f"postgresql://fuseline:{PASSWORD}@{nowhere}/db"},
        ),
    }
    chosen = {name: start for name, start in starts.items() if (name in QUICK_STARTS) != slow}
    outputs: dict[str, str] = {}
    problems = []
    for name, (code, output) in failed_starts(tmp_path, chosen).items():
        outputs[name] = output
        if code not in (1, 2):
            problems.append(f"{name}: exit status {code}")
        if not output.strip():
            problems.append(f"{name}: said nothing about why it stopped")
        if found := leaked(output):
            problems.append(f"{name}: printed {found}: {output[-2000:]}")
    name = f"secrets-startup-{'database' if slow else 'settings'}"
    report(name, "none", began, outputs, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.chaos
@pytest.mark.postgres
def test_fault_9_outages_and_refused_requests_show_no_secret(
    tmp_path: Path, postgres_url: str, postgres_admin_url: str
) -> None:
    began = time.monotonic()
    # Trust authentication ignores the password, so the broker connects with it.
    parts = urlsplit(postgres_url)
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    secret_url = urlunsplit(parts._replace(netloc=netloc))
    database = parts.path.lstrip("/")
    answers: dict[str, str] = {}
    server = start_server(tmp_path, "--log-level", "DEBUG", database_url=secret_url)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:

            def ask(name: str, method: str, path: str, token: str | None, body: bytes = b"") -> int:
                headers = {"Content-Type": "application/json"}
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                response = client.request(method, path, content=body or None, headers=headers)
                answers[name] = f"{response.status_code} {dict(response.headers)} {response.text}"
                return response.status_code

            assert ask("health", "GET", "/health", None) == 200
            ask("openapi", "GET", "/openapi.json", None)
            ask("wrong token", "GET", "/v1/runs", STRANGER_TOKEN)
            ask("worker token as client", "GET", "/v1/runs", WORKER_TOKEN)
            ask("client token as worker", "POST", "/v1/workers", CLIENT_TOKEN, b"{}")
            ask("bad body", "POST", "/v1/runs", CLIENT_TOKEN, b"{not json")
            ask("unknown run", "GET", "/v1/runs/nothing-here", CLIENT_TOKEN)

            # A database outage: the broker's database refuses connections
            # and its connections are cut.
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (database,),
                )
                try:
                    register = raw({"workflows": [flows.quick.to_schema().model_dump(mode="json")]})
                    outage = {
                        "outage list": ("GET", "/v1/runs", CLIENT_TOKEN, b""),
                        "outage dispatch": (
                            "POST",
                            "/v1/runs",
                            CLIENT_TOKEN,
                            raw({"workflow_id": "x"}),
                        ),
                        "outage register": ("POST", "/v1/workers", WORKER_TOKEN, register),
                    }
                    with concurrent.futures.ThreadPoolExecutor(len(outage)) as pool:
                        asked = {name: pool.submit(ask, name, *r) for name, r in outage.items()}
                        statuses = {name: future.result() for name, future in asked.items()}
                finally:
                    admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            assert set(statuses.values()) == {503}, answers

            def recovered() -> bool:
                return (
                    client.get(
                        "/v1/runs", headers={"Authorization": f"Bearer {CLIENT_TOKEN}"}
                    ).status_code
                    == 200
                )

            wait_until(recovered, 30, "the broker to reach its database again")
    finally:
        code = server.stop()
    texts = {**answers, "server log": server.log()}
    problems = [f"{name}: shows {found}" for name, text in texts.items() if (found := leaked(text))]
    report("secrets-runtime", "postgres", began, texts, problems)
    assert code == 0
    assert "PostgreSQL at" in server.log(), "the log does not say which storage it uses"
    assert not problems, "\n".join(problems)
