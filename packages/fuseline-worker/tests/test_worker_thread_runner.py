"""The thread runner keeps threads for the next step, and a hung step holds up no other."""

from __future__ import annotations

import threading

from fuseline import Step, Workflow
from fuseline.worker._runners import StepJob, ThreadRunner
from fuseline.workflow._execution import StepOutcome


class WhereAmI(Step):
    def run_step(self, release: str) -> int:
        if release == "never":
            hold.wait(30)
        return threading.get_ident()


hold = threading.Event()
step = WhereAmI()
workflow = Workflow(outputs=[step], workflow_id="thread-runner")
outcomes: dict[str, list[object]] = {}  # the thread ids each step reported, by its input


def run(runner: ThreadRunner, release: str) -> threading.Event:
    finished = threading.Event()
    outcomes.setdefault(release, [])

    def done(outcome: StepOutcome | None) -> None:
        assert outcome is not None
        outcomes[release].append(outcome.result)
        finished.set()

    runner.start(StepJob(workflow, step, {}, {"release": release}), done)
    return finished


def test_a_finished_thread_takes_the_next_step() -> None:
    runner = ThreadRunner()
    try:
        assert run(runner, "first").wait(10)
        assert run(runner, "second").wait(10)
        assert outcomes["first"] == outcomes["second"]  # the same thread ran both
    finally:
        runner.close()


def test_a_hung_step_does_not_hold_up_the_next_one() -> None:
    runner = ThreadRunner()
    try:
        hung = run(runner, "never")
        assert run(runner, "meanwhile").wait(10)
        assert not hung.is_set()
        hold.set()
        assert hung.wait(10)
        assert outcomes["never"] != outcomes["meanwhile"]
    finally:
        hold.set()
        runner.close()
