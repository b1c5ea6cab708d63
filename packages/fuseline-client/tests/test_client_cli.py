"""The ``fuseline`` command: output for people and scripts, and exit statuses."""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from fuseline import Status
from fuseline.clients import BrokerClient
from fuseline.clients.cli import EXIT_CODES, main
from fuseline.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
)
from fuseline.messages import (
    KeepAliveReply,
    RunDetails,
    RunPage,
    RunSummary,
    StepAssignment,
    StepRecord,
    StepReport,
    WorkerInfo,
)
from fuseline.workflow import StepSchema, WorkflowSchema

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def run(status: Status, run_id: str = "run-1") -> RunDetails:
    return RunDetails(
        run_id=run_id,
        workflow_id="flow",
        workflow_version="2",
        status=status,
        created_at=NOW,
        inputs={"x": 1},
        steps={"a": StepRecord(name="a", status=status, attempts=1, worker_id="w1")},
        result={"a": 42} if status is Status.SUCCEEDED else None,
    )


class StubClient(BrokerClient):
    """Answers the application calls with canned data and records them."""

    def __init__(self, final: Status = Status.SUCCEEDED, error: Exception | None = None) -> None:
        self.final = final
        self.error = error
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        raise NotImplementedError

    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        raise NotImplementedError

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        raise NotImplementedError

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        raise NotImplementedError

    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        raise NotImplementedError

    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        raise NotImplementedError

    def dispatch(self, workflow: Any, inputs: Any = None, **options: Any) -> str:
        self._maybe_fail()
        self.calls.append(("dispatch", (workflow, inputs, options)))
        return "run-1"

    def get_run(self, run_id: str) -> RunDetails:
        self._maybe_fail()
        self.calls.append(("get_run", run_id))
        return run(Status.RUNNING, run_id)

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        self._maybe_fail()
        self.calls.append(("wait_for_run", (run_id, timeout)))
        return run(self.final, run_id)

    def list_runs(self, **filters: Any) -> RunPage:
        self._maybe_fail()
        self.calls.append(("list_runs", filters))
        summary = RunSummary(
            run_id="run-1",
            workflow_id="flow",
            workflow_version="2",
            status=Status.FAILED,
            created_at=NOW,
        )
        return RunPage(items=[summary], next_cursor="page-2")

    def cancel_run(self, run_id: str) -> RunDetails:
        self._maybe_fail()
        return run(Status.CANCELLED, run_id)

    def list_workflows(self) -> list[WorkflowSchema]:
        self._maybe_fail()
        step = (StepSchema(name="a"),)
        return [
            WorkflowSchema(workflow_id="flow", version="2", steps=step, outputs=("a",)),
            WorkflowSchema(workflow_id="other", steps=step, outputs=("a",)),
        ]

    def list_workers(self) -> list[WorkerInfo]:
        self._maybe_fail()
        return [
            WorkerInfo(
                worker_id="w1",
                name="box-1",
                workflows=[("flow", "2")],
                registered_at=NOW,
                last_seen_at=NOW,
            )
        ]

    def close(self) -> None:
        self.closed = True


def invoke(argv: list[str], stub: StubClient) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def factory(args: argparse.Namespace) -> BrokerClient:
        return stub

    code = main(argv, client_factory=factory, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_dispatch_prints_the_run_id_for_scripts() -> None:
    stub = StubClient()
    code, out, _ = invoke(
        ["dispatch", "flow", "--version", "2", "--input", '{"x": 1}', "--idempotency-key", "k"],
        stub,
    )
    assert (code, out) == (0, "run-1\n")
    assert stub.calls == [
        ("dispatch", ("flow", {"x": 1}, {"version": "2", "idempotency_key": "k"}))
    ]
    assert stub.closed


def test_dispatch_reads_inputs_from_a_file(tmp_path: Any) -> None:
    inputs = tmp_path / "in.json"
    inputs.write_text('{"query": "hi"}')
    stub = StubClient()
    code, _, _ = invoke(["dispatch", "flow", "--input", f"@{inputs}"], stub)
    assert code == 0 and stub.calls[0][1][1] == {"query": "hi"}


@pytest.mark.parametrize(
    ("final", "code"), [(Status.SUCCEEDED, 0), (Status.FAILED, 1), (Status.CANCELLED, 1)]
)
def test_waiting_exits_with_what_became_of_the_run(final: Status, code: int) -> None:
    got, out, _ = invoke(["dispatch", "flow", "--wait", "--timeout", "5"], StubClient(final))
    assert got == code
    assert f"Status    {final}" in out
    got, out, _ = invoke(["runs", "wait", "run-1", "--json"], StubClient(final))
    assert got == code and json.loads(out)["status"] == final


def test_json_output_is_one_parseable_document() -> None:
    for argv in (["runs", "list"], ["runs", "show", "r"], ["workflows"], ["workers"]):
        code, out, _ = invoke([*argv, "--json"], StubClient())
        assert code == 0
        json.loads(out)


def test_tables_for_people() -> None:
    _, out, _ = invoke(["runs", "list", "--status", "FAILED", "--limit", "3"], StubClient())
    assert out.splitlines()[0].split() == [
        "RUN",
        "WORKFLOW",
        "VERSION",
        "STATUS",
        "CREATED",
        "FINISHED",
    ]
    assert "--cursor page-2" in out
    _, out, _ = invoke(["workflows", "--workflow", "flow"], StubClient())
    assert "other" not in out and "flow" in out
    _, out, _ = invoke(["workers"], StubClient())
    assert "box-1" in out and "flow@2" in out
    _, out, _ = invoke(["runs", "show", "run-1"], StubClient())
    assert "Inputs" in out and '"x": 1' in out


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RunNotFoundError("no run"), 3),
        (RunFinishedError("done already"), 4),
        (AuthenticationError("bad token"), 5),
        (BrokerUnavailableError("down"), 6),
        (WaitTimeoutError("still going"), 7),
    ],
)
def test_errors_exit_with_their_own_status(error: Exception, code: int) -> None:
    got, out, err = invoke(["runs", "cancel", "run-1"], StubClient(error=error))
    assert got == code and out == ""
    assert str(error) in err
    assert code in EXIT_CODES


def test_bad_input_is_a_usage_error() -> None:
    assert invoke(["dispatch", "flow", "--input", "[1, 2]"], StubClient())[0] == 2
    assert invoke(["dispatch", "flow", "--input", "{oops"], StubClient())[0] == 2
    assert invoke(["runs", "frobnicate"], StubClient())[0] == 2


def test_the_worker_command_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fuseline.worker.cli", None)
    code, _, err = invoke(["worker", "my.module:flow"], StubClient())
    assert code == 9
    assert 'pip install "fuseline[worker]"' in err
