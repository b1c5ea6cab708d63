"""Long polls over HTTP when every waiting thread of the server is taken.

A long poll keeps its thread from one slice of its wait to the next, so an
idle worker costs the server no event-loop round trip per slice; it gives
the thread up after a slice only when other long polls wait in line for one.
These tests run the server with a single waiting thread, held by one worker's
long poll, and check that a second long poll is still answered while the
first one goes on waiting.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, RunningServer, wait_until

from fuseline import Status, StepReport
from fuseline.clients import HttpBrokerClient
from fuseline.messages import StepAssignment
from fuseline.workflow import WorkflowSchema

# Far longer than a slice (1 s) and than anything the tests wait for.
LONG_WAIT = 30.0
PROMPTLY = 15.0


def schema(workflow_id: str) -> WorkflowSchema:
    return WorkflowSchema.model_validate(
        {"workflow_id": workflow_id, "steps": [{"name": "only"}], "outputs": ["only"]}
    )


class HeldPoll(threading.Thread):
    """A worker's long poll for ``poll-a``, holding the server's only waiting thread."""

    def __init__(self, server: RunningServer) -> None:
        super().__init__(daemon=True)
        self.client = HttpBrokerClient(server.url, WORKER_TOKEN, timeout=LONG_WAIT + 30)
        self.worker_id = self.client.register_worker([schema("poll-a")])
        self.found: list[StepAssignment] | None = None

    def run(self) -> None:
        self.found = self.client.get_steps(self.worker_id, wait=LONG_WAIT)


@pytest.fixture
def server(http_server: Any, tmp_path: Path) -> RunningServer:
    running: RunningServer = http_server(
        "--max-waiters",
        "1",
        "--max-wait",
        str(LONG_WAIT),
        "--log-level",
        "DEBUG",
        database_url=f"sqlite:///{tmp_path / 'polls.sqlite3'}",
    )
    return running


def hold_the_waiting_thread(server: RunningServer) -> HeldPoll:
    held = HeldPoll(server)
    held.start()
    wait_until(
        # The log names the route, not the worker.
        lambda: "POST /v1/workers/{worker_id}/claims started" in server.log(),
        PROMPTLY,
        "the server to hold the first long poll",
    )
    return held


def finish(held: HeldPoll, app: HttpBrokerClient) -> None:
    """Give the held poll its work, so that it ends; check that it still worked."""
    app.dispatch_workflow(schema("poll-a"), {})
    held.join(PROMPTLY)
    assert not held.is_alive()
    assert held.found is not None and [a.workflow_id for a in held.found] == ["poll-a"]
    held.client.close()


def test_a_long_poll_in_line_for_a_thread_is_served_while_the_first_waits_on(
    server: RunningServer,
) -> None:
    held = hold_the_waiting_thread(server)
    with (
        HttpBrokerClient(server.url, CLIENT_TOKEN) as app,
        HttpBrokerClient(server.url, WORKER_TOKEN, timeout=LONG_WAIT + 30) as other,
    ):
        other_id = other.register_worker([schema("poll-b")])
        run_id = app.dispatch_workflow(schema("poll-b"), {})
        # This long poll waits in line behind the held one, which gives its
        # thread up at the end of its current slice.
        found = other.get_steps(other_id, wait=LONG_WAIT)
        assert [(a.workflow_id, a.instance_id) for a in found] == [("poll-b", run_id)]
        assert held.is_alive(), "the first long poll should still be waiting"
        finish(held, app)


def test_a_wait_for_a_run_in_line_for_a_thread_returns_when_the_run_ends(
    server: RunningServer,
) -> None:
    held = hold_the_waiting_thread(server)
    with (
        HttpBrokerClient(server.url, CLIENT_TOKEN, timeout=LONG_WAIT + 30) as app,
        HttpBrokerClient(server.url, WORKER_TOKEN) as other,
    ):
        other_id = other.register_worker([schema("poll-b")])
        run_id = app.dispatch_workflow(schema("poll-b"), {})
        (assignment,) = other.get_steps(other_id)  # no wait: not a long poll
        outcome: list[Any] = []
        waiting = threading.Thread(
            target=lambda: outcome.append(app.wait_for_run(run_id, timeout=LONG_WAIT)),
            daemon=True,
        )
        waiting.start()
        other.report_step(
            other_id,
            StepReport(
                workflow_id="poll-b",
                instance_id=run_id,
                step_name="only",
                state=Status.SUCCEEDED,
                result=7,
                lease_token=assignment.lease_token,
            ),
        )
        waiting.join(PROMPTLY)
        assert not waiting.is_alive(), "the wait for the run was not answered"
        (run,) = outcome
        assert run.status is Status.SUCCEEDED and run.result == {"only": 7}
        assert held.is_alive(), "the first long poll should still be waiting"
        finish(held, app)
