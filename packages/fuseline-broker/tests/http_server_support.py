"""Start the HTTP broker as a real process and wait on it, for the ``test_http_*`` suites.

Every wait here polls a condition until a deadline; nothing sleeps for a
fixed time and hopes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from postgres_support import postgres_admin_url, postgres_url

__all__ = ["postgres_admin_url", "postgres_url"]  # re-exported for the worker's tests

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

WORKER_TOKEN = "worker-" + secrets.token_hex(16)
CLIENT_TOKEN = "client-" + secrets.token_hex(16)

# Variables of the developer's shell that would change how the server starts.
_SERVER_VARIABLES = (
    "DATABASE_URL",
    "FUSELINE_HOST",
    "FUSELINE_PORT",
    "FUSELINE_PROCESSES",
    "FUSELINE_TOKEN",
    "FUSELINE_TOKEN_FILE",
    "FUSELINE_WORKER_TOKEN",
    "FUSELINE_WORKER_TOKEN_FILE",
    "FUSELINE_CLIENT_TOKEN",
    "FUSELINE_CLIENT_TOKEN_FILE",
    "FUSELINE_ALLOW_UNAUTHENTICATED_REMOTE",
)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningServer:
    """A ``python -m fuseline.broker.http`` process started by a test."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    stopped_with: int | None = field(default=None)

    @property
    def pid(self) -> int:
        """The supervisor's process id (also its process group id)."""
        return self.process.pid

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and wait for the exit status (kill the group after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server ignored signal {signum} for {timeout} s:\n{self.log()}")
        self.stopped_with = code
        return code

    def group_alive(self) -> bool:
        """Whether any process of the server's process group is still running."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def kill(self) -> None:
        """Kill every process the server started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()


def launch(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """Start the server process without waiting for it."""
    port = port or free_port()
    environment = {k: v for k, v in os.environ.items() if k not in _SERVER_VARIABLES}
    environment.update(env or {})
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fuseline.broker.http", "--port", str(port), *args],
            cwd=tmp_path,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_path, port


def start_server(
    tmp_path: Path,
    *args: str,
    database_url: str | None = None,
    tokens: bool = True,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start the server and wait until it answers its health route."""
    environment = dict(env or {})
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    if tokens:
        environment.setdefault("FUSELINE_WORKER_TOKEN", WORKER_TOKEN)
        environment.setdefault("FUSELINE_CLIENT_TOKEN", CLIENT_TOKEN)
    process, log_path, port = launch(tmp_path, *args, env=environment)
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            return httpx.get(f"{server.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, START_TIMEOUT, "the server to answer /health")
    return server


ServerFactory = Callable[..., RunningServer]


def _stop_all(started: list[RunningServer]) -> None:
    problems = []
    for server in started:
        if server.stopped_with is None:
            code = server.stop()
            if code != 0:
                problems.append(f"exit status {code}:\n{server.log()}")
        if server.group_alive():
            server.kill()
            problems.append(f"server processes outlived the supervisor:\n{server.log()}")
    if problems:
        pytest.fail("\n\n".join(problems))


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str, **options: Any) -> Iterator[RunningServer]:
    """One server for the ``with`` block; it must stop cleanly on SIGTERM at the end."""
    server = start_server(tmp_path, *args, **options)
    try:
        yield server
    finally:
        _stop_all([server])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with ``http_server(*flags, database_url=..., tokens=...)``.

    Each server is stopped with SIGTERM at the end of the test, which must
    make it exit cleanly.
    """
    started: list[RunningServer] = []

    def factory(*args: str, **options: Any) -> RunningServer:
        server = start_server(tmp_path, *args, **options)
        started.append(server)
        return server

    yield factory
    _stop_all(started)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def server(
    request: pytest.FixtureRequest, http_server: ServerFactory, tmp_path: Path
) -> RunningServer:
    """One server, over the embedded SQLite backend and again over PostgreSQL."""
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    return http_server(database_url=database_url)
