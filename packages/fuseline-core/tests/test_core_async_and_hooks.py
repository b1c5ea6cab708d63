"""Async steps, mixed workflows, lifecycle hooks and workflow policies."""

import asyncio
import threading
from typing import Any

from fuseline import AsyncStep, Depends, Status, Step, Workflow
from fuseline.policies import StepPolicy, WorkflowPolicy


class AsyncStart(AsyncStep):
    async def run_step(self, x: int) -> int:
        await asyncio.sleep(0)
        return x * 2


class AsyncDouble(AsyncStep):
    async def run_step(self, value: int) -> int:
        await asyncio.sleep(0)
        return value * 2


class SyncInc(Step):
    def run_step(self, value: int) -> int:
        return value + 1


def mixed() -> Workflow:
    a, b, c = AsyncStart(name="a"), SyncInc(name="b"), AsyncDouble(name="c")
    a >> b >> c
    return Workflow(outputs=[c])


def test_async_steps_run_inside_a_sync_run() -> None:
    run = mixed().run({"x": 3})
    assert run.status is Status.SUCCEEDED
    assert run.result == {"c": 14}


def test_sync_and_async_steps_run_inside_run_async() -> None:
    run = asyncio.run(mixed().run_async({"x": 3}))
    assert run.result == {"c": 14}


def test_sync_run_called_from_inside_an_event_loop() -> None:
    async def main() -> Any:
        return mixed().run({"x": 1})

    assert asyncio.run(main()).result == {"c": 6}


def test_run_async_runs_ready_async_steps_concurrently() -> None:
    started: list[str] = []
    both = asyncio.Event()

    class Meet(AsyncStep):
        async def run_step(self) -> str:
            started.append(self.name)
            if len(started) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), timeout=5)
            return self.name

    wf = Workflow(outputs=[Meet(name="m1"), Meet(name="m2")])
    run = asyncio.run(wf.run_async())
    assert run.result == {"m1": "m1", "m2": "m2"}


def test_async_step_failure_is_recorded() -> None:
    class Fails(AsyncStep):
        async def run_step(self) -> None:
            raise ValueError("nope")

    run = Workflow(outputs=[Fails()]).run()
    assert run.status is Status.FAILED
    error = run.steps["Fails"].error
    assert error is not None and error.type == "ValueError" and error.message == "nope"
    assert error.traceback is not None and "ValueError: nope" in error.traceback


def test_lifecycle_hooks_run_around_run_step() -> None:
    events: list[str] = []

    class Hooked(Step):
        def before_run(self) -> None:
            events.append("before")

        def run_step(self) -> int:
            events.append("run")
            return 1

        def after_run(self, result: Any) -> None:
            events.append(f"after:{result}")

    Workflow(outputs=[Hooked()]).run()
    assert events == ["before", "run", "after:1"]


def test_workflow_policy_hooks_fire_in_order() -> None:
    events: list[str] = []

    class Watch(WorkflowPolicy):
        def on_workflow_start(self, inputs: dict[str, Any]) -> None:
            events.append(f"start:{inputs}")

        def on_step_start(self, step: Step) -> None:
            events.append(f"step:{step.name}")

        def on_step_success(self, step: Step, result: Any) -> None:
            events.append(f"ok:{step.name}={result}")

        def on_step_failure(self, step: Step, error: BaseException) -> None:
            events.append(f"fail:{step.name}:{error}")

        def on_workflow_finished(self, run: Any) -> None:
            events.append(f"done:{run.status}")

    class One(Step):
        def run_step(self) -> int:
            return 1

    class Bad(Step):
        def run_step(self) -> None:
            raise RuntimeError("x")

    one = One()
    bad = Bad()
    one >> bad
    watch = Watch()
    wf = Workflow(outputs=[bad], policies=[watch])
    assert watch.workflow is wf
    wf.run({"k": 1})
    assert events == [
        "start:{'k': 1}",
        "step:One",
        "ok:One=1",
        "step:Bad",
        "fail:Bad:x",
        "done:FAILED",
    ]


def test_step_policy_wraps_sync_and_async_calls() -> None:
    calls: list[str] = []

    class Around(StepPolicy):
        def execute(self, step: Step, call: Any) -> Any:
            calls.append(f"sync:{step.name}")
            return call() * 10

        async def execute_async(self, step: Step, call: Any) -> Any:
            calls.append(f"async:{step.name}")
            return (await call()) * 10

    a = AsyncStart(name="a", policies=[Around()])
    b = SyncInc(name="b").add_policy(Around())
    a >> b
    run = Workflow(outputs=[b]).run({"x": 1})
    assert run.result == {"b": 210}
    assert calls == ["async:a", "sync:b"]


def test_execute_step_for_hand_written_workers() -> None:
    class Source(Step):
        def run_step(self) -> list[str]:
            return ["d1"]

    class Answer(Step):
        def run_step(self, docs: list[str], query: str) -> str:
            return f"{query}:{docs[0]}"

    source, answer = Source(), Answer()
    source.next(answer)
    wf = Workflow(outputs=[answer])
    step_lookup = {step.name: step for step in wf.steps}
    wf.params.update({"query": "q"})
    shared = {step_lookup[name]: value for name, value in {"Source": ["d9"]}.items()}
    assert wf._execute_step(answer, shared) == "q:d9"
    assert answer.state is Status.SUCCEEDED
    # Explicit per-call inputs win over params, and names work as keys too.
    assert wf._execute_step(answer, {"Source": ["d2"]}, {"query": "z"}) == "z:d2"


def test_execute_step_reports_failure_through_state() -> None:
    class Bad(Step):
        def run_step(self) -> None:
            raise KeyError("k")

    bad = Bad()
    wf = Workflow(outputs=[bad])
    assert wf._execute_step(bad, {}) is None
    assert bad.state is Status.FAILED
    assert bad.error is not None and bad.error.type == "KeyError"


def test_workflow_run_from_several_threads_with_async_steps() -> None:
    wf = mixed()
    out: list[Any] = []
    threads = [
        threading.Thread(target=lambda i=i: out.append(wf.run({"x": i}).result["c"]))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [(i * 2 + 1) * 2 for i in range(4)]


def test_or_group_through_depends_list_with_async_members() -> None:
    class Slow(AsyncStep):
        async def run_step(self) -> str:
            await asyncio.sleep(0.2)
            return "slow"

    class Fast(AsyncStep):
        async def run_step(self) -> str:
            return "fast"

    slow, fast = Slow(), Fast()
    calls: list[str] = []

    class Either(AsyncStep):
        async def run_step(self, v: str = Depends([slow, fast])) -> str:
            calls.append(v)
            return v

    run = asyncio.run(Workflow(outputs=[Either()]).run_async())
    assert run.result == {"Either": "fast"}
    assert calls == ["fast"]
    assert run.steps["Slow"].status is Status.SUCCEEDED
