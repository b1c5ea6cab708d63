"""Stop signals, and finding workflows from the command line."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from worker_fakes import wait_until

from fuseline import Workflow
from fuseline.errors import InvalidInputError
from fuseline.worker import ImmediateStop
from fuseline.worker._loading import load_workflows
from fuseline.worker._signals import StopSignals
from fuseline.worker.cli import main


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_asks_for_a_graceful_stop_and_the_second_for_an_immediate_one(
    signum: signal.Signals,
) -> None:
    before = signal.getsignal(signum)
    calls: list[bool] = []
    with StopSignals(calls.append, lambda: "nothing held"):
        os.kill(os.getpid(), signum)
        wait_until(lambda: calls == [False])

        def signal_again() -> None:
            os.kill(os.getpid(), signum)
            wait_until(lambda: False, timeout=5)  # the handler raises in here

        with pytest.raises(ImmediateStop) as stopped:
            signal_again()
        assert stopped.value.signum == signum
        wait_until(lambda: calls == [False, True])
    assert signal.getsignal(signum) is before


@pytest.fixture
def flows_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"worker_test_flows_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from fuseline import Step, Workflow

            class Hello(Step):
                def run_step(self) -> str:
                    return "hi"

            workflow = Workflow(outputs=[Hello()], workflow_id="hello")
            other = Workflow(outputs=[Hello()], workflow_id="other")
            both = [workflow, other]

            class Registry:
                main = workflow

            not_a_workflow = 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_specs_name_workflows_lists_and_dotted_attributes(flows_module: str) -> None:
    found = load_workflows(
        [f"{flows_module}:workflow", f"{flows_module}:both", f"{flows_module}:Registry.main"]
    )
    assert all(isinstance(w, Workflow) for w in found)
    assert [w.workflow_id for w in found] == ["hello", "hello", "other", "hello"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:attribute"),
        ("{m}:", "module:attribute"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("{m}:not_a_workflow", "is a int, not a Workflow"),
        ("surely_not_a_module_xyz:workflow", "Cannot import module"),
    ],
)
def test_bad_specs_say_what_is_wrong(flows_module: str, spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_workflows([spec.format(m=flows_module)])


def test_the_command_rejects_a_bad_spec_with_status_2(
    flows_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main([f"{flows_module}:not_a_workflow", "--broker", "http://127.0.0.1:9"]) == 2
    assert "not a Workflow" in caplog.text


def test_the_command_validates_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["m:w", "--concurrency", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
