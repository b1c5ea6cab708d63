"""Stop signals, and finding workflows from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
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


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_stop_while_the_workflows_load_ends_the_worker_cleanly(tmp_path: Path) -> None:
    """SIGTERM sent while the worker command imports the workflows: exit 0, no work taken."""
    loading, go = tmp_path / "loading", tmp_path / "go"
    (tmp_path / "slow_flows.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            from fuseline import Step, Workflow

            pathlib.Path({str(loading)!r}).touch()
            deadline = time.monotonic() + 30
            while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.01)

            class Hello(Step):
                def run_step(self) -> str:
                    return "hi"

            workflow = Workflow(outputs=[Hello()], workflow_id="slow")
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        # The broker address leads nowhere: the worker must stop before using it.
        command = [sys.executable, "-m", "fuseline.worker", "slow_flows:workflow"]
        process = subprocess.Popen(
            [*command, "--broker", "http://127.0.0.1:9"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: loading.exists() or process.poll() is not None, timeout=30)
        process.send_signal(signal.SIGTERM)
        go.touch()
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert code == 0, output
    assert "asked to stop while starting up" in output
    assert "worker starting" not in output
