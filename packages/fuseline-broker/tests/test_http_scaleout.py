"""Several broker servers over one database serve the same workers correctly.

The broker keeps no state of its own outside the storage, so workers and
applications may talk to any server: every step still runs exactly once and
every run ends with the right result.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, RunningServer, wait_until

from fuseline import Depends, Status, Step, StepReport, Workflow
from fuseline.clients import HttpBrokerClient

RUNS = 12
WORKERS = 4


class Start(Step):
    def run_step(self, n: int) -> int:
        return n


class Double(Step):
    def run_step(self, start: int) -> int:
        return start * 2


class Square(Step):
    def run_step(self, start: int) -> int:
        return start * start


def database_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'shared.sqlite3'}"


def new_connection_per_request() -> httpx.HTTPTransport:
    # Without pooled connections, each request may land on any process of a
    # multi-process server.
    return httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))


class Worker(threading.Thread):
    def __init__(self, url: str, workflow: Workflow, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = HttpBrokerClient(url, WORKER_TOKEN, transport=new_connection_per_request())
        self.workflow = workflow
        self.stop = stop
        self.executed: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self.worker_id = self.client.register_worker([workflow.to_schema()])

    def run(self) -> None:
        steps = {s.name: s for s in self.workflow.steps}
        try:
            while not self.stop.is_set():
                assignment = self.client.get_step(self.worker_id, wait=0.5)
                if assignment is None:
                    continue
                step = steps[assignment.step_name]
                shared: dict[Step | str, Any] = {}
                shared.update(assignment.results)
                result = self.workflow._execute_step(step, shared, assignment.workflow_inputs)
                self.client.report_step(
                    self.worker_id,
                    StepReport(
                        workflow_id=assignment.workflow_id,
                        instance_id=assignment.instance_id,
                        step_name=assignment.step_name,
                        state=step.state,
                        result=result,
                        error=step.error,
                        lease_token=assignment.lease_token,
                    ),
                )
                self.executed.append((assignment.instance_id, assignment.step_name))
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)
        finally:
            self.client.close()


def exercise(servers: list[RunningServer]) -> None:
    workflow = _workflow()
    stop = threading.Event()
    workers = [Worker(servers[i % len(servers)].url, workflow, stop) for i in range(WORKERS)]
    for worker in workers:
        worker.start()
    apps = [
        HttpBrokerClient(server.url, CLIENT_TOKEN, transport=new_connection_per_request())
        for server in servers
    ]
    try:
        run_ids = {
            apps[n % len(apps)].dispatch_workflow(workflow.to_schema(), {"n": n}): n
            for n in range(RUNS)
        }
        reader = apps[-1]
        finished = {run_id: reader.wait_for_run(run_id, timeout=120) for run_id in run_ids}
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        for app in apps:
            app.close()

    assert [e for w in workers for e in w.errors] == []
    for run_id, n in run_ids.items():
        run = finished[run_id]
        assert run.status is Status.SUCCEEDED, run
        assert run.result == {"Join": 2 * n + n * n}
    executions = Counter(pair for worker in workers for pair in worker.executed)
    assert len(executions) == RUNS * 4
    assert set(executions.values()) == {1}, "a step ran twice"
    busy = [worker for worker in workers if worker.executed]
    assert len(busy) > 1, "one worker did everything"


def _workflow() -> Workflow:
    """A diamond: the join runs once both branches are done."""
    start, double, square = Start(), Double(), Square()
    start >> double
    start >> square

    class Join(Step):
        def run_step(
            self,
            doubled: int = Depends(double),  # type: ignore[assignment]
            squared: int = Depends(square),  # type: ignore[assignment]
        ) -> int:
            return doubled + squared

    return Workflow(outputs=[Join()], workflow_id="scale-out")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_three_servers_over_one_database(
    kind: str, request: pytest.FixtureRequest, http_server: Any, tmp_path: Path
) -> None:
    database_url = database_for(kind, request, tmp_path)
    servers = [http_server(database_url=database_url) for _ in range(3)]
    exercise(servers)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_server_with_three_processes(
    kind: str, request: pytest.FixtureRequest, http_server: Any, tmp_path: Path
) -> None:
    database_url = database_for(kind, request, tmp_path)
    server: RunningServer = http_server(
        "--processes", "3", "--log-level", "DEBUG", database_url=database_url
    )
    exercise([server])
    serving = wait_until(
        lambda: {
            line.split("[", 1)[1].split("]", 1)[0]
            for line in server.log().splitlines()
            if "fuseline.broker.http[" in line and "claims ->" in line
        },
        5,
        "claims to be logged",
    )
    assert len(serving) > 1, "every request reached the same process"
