"""SIGTERM and SIGINT stop the server (every process of it) cleanly and promptly."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_server_support import WORKER_TOKEN, RunningServer, wait_until

from fuseline.clients import HttpBrokerClient

SCHEMA = {"workflow_id": "stop", "steps": [{"name": "only"}], "outputs": ["only"]}
# Generous for slow CI machines; the server itself gives requests 5 s.
PROMPTLY = 10.0


def group_members(pgid: int) -> list[int]:
    """Process ids of the process group (Linux: read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process(http_server: Any, tmp_path: Path, signum: int) -> None:
    server: RunningServer = http_server(
        "--processes", "3", database_url=f"sqlite:///{tmp_path / 'stop.sqlite3'}"
    )
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.stop(signum, timeout=PROMPTLY) == 0
    wait_until(lambda: not server.group_alive(), PROMPTLY, "every server process to exit")
    assert "Stopped." in server.log()


@pytest.mark.parametrize("whole_group", [False, True], ids=["supervisor", "whole-group"])
def test_long_polls_in_flight_do_not_hold_the_shutdown(
    http_server: Any, tmp_path: Path, whole_group: bool
) -> None:
    # whole-group: SIGTERM reaches every process of the server at once, as
    # systemd sends it; the server processes leave the decision to the
    # supervisor, so the poll is answered all the same.
    server: RunningServer = http_server(
        "--max-wait",
        "30",
        "--log-level",
        "DEBUG",
        database_url=f"sqlite:///{tmp_path / 'poll.sqlite3'}",
    )
    with HttpBrokerClient(server.url, WORKER_TOKEN) as worker:
        worker_id = worker.register_worker([_schema()])
    answers: list[httpx.Response | Exception] = []

    def poll() -> None:
        try:
            answers.append(
                httpx.post(
                    f"{server.url}/v1/workers/{worker_id}/claims",
                    json={"wait": 30},
                    headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
                    timeout=60,
                )
            )
        except httpx.HTTPError as exc:
            answers.append(exc)

    polling = threading.Thread(target=poll, daemon=True)
    polling.start()
    wait_until(
        lambda: "POST /v1/workers/{worker_id}/claims started" in server.log(),
        PROMPTLY,
        "the server to hold the long poll",
    )
    if whole_group:
        os.killpg(server.pid, signal.SIGTERM)
        assert server.process.wait(PROMPTLY) == 0
        server.stopped_with = 0
    else:
        assert server.stop(signal.SIGTERM, timeout=PROMPTLY) == 0
    polling.join(PROMPTLY)
    assert not polling.is_alive(), "the long poll outlived the server"
    # The held poll was answered (no step for now) before the server went away.
    (answer,) = answers
    assert isinstance(answer, httpx.Response), (answer, server.log())
    assert answer.status_code == 200 and answer.json() == {"assignments": []}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_server_process_leaves_sigterm_to_the_supervisor(
    http_server: Any, tmp_path: Path
) -> None:
    server: RunningServer = http_server(database_url=f"sqlite:///{tmp_path / 'term.sqlite3'}")
    (child,) = wait_until(
        lambda: [pid for pid in group_members(server.pid) if pid != server.pid],
        PROMPTLY,
        "the server process",
    )
    os.kill(child, signal.SIGTERM)
    # The signal waits, blocked, and the process goes on serving.
    wait_until(lambda: _pending_signals(child) & (1 << (signal.SIGTERM - 1)), PROMPTLY, "SIGTERM")
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.stop(signal.SIGTERM, timeout=PROMPTLY) == 0


def _pending_signals(pid: int) -> int:
    """The signals pending for the process as a whole (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no ShdPnd line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dead_server_process_takes_the_server_down(http_server: Any, tmp_path: Path) -> None:
    server: RunningServer = http_server(
        "--processes", "2", database_url=f"sqlite:///{tmp_path / 'dead.sqlite3'}"
    )
    children = wait_until(
        lambda: [pid for pid in group_members(server.pid) if pid != server.pid],
        PROMPTLY,
        "the server processes",
    )
    os.kill(children[0], signal.SIGKILL)
    assert server.process.wait(PROMPTLY) == 1
    server.stopped_with = 1
    assert "exited with status" in server.log()
    wait_until(lambda: not server.group_alive(), PROMPTLY, "the other server process to exit")


def _schema() -> Any:
    from fuseline.workflow import WorkflowSchema

    return WorkflowSchema.model_validate(SCHEMA)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopping_process_sees_which_answers_are_still_to_be_written() -> None:
    # The stop waits until the connections that carried the last answers are
    # closed: only connections to this process's listening ports count.
    import socket

    from fuseline.broker.http._serve import open_connections

    with socket.create_server(("127.0.0.1", 0)) as listener:
        before = open_connections()
        assert before is not None
        with socket.create_connection(listener.getsockname()) as client:
            served, _ = listener.accept()
            with served:
                now_open = open_connections()
                assert now_open is not None
                assert now_open - before == {os.fstat(served.fileno()).st_ino}
                # The client's end is not one of the server's connections.
                assert os.fstat(client.fileno()).st_ino not in now_open
        assert open_connections() == before
