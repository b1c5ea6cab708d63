"""RetryPolicy and StepTimeoutPolicy, sync and async."""

import asyncio
import os
import time
from typing import Any

import pytest

from fuseline import AsyncStep, Status, Step, Workflow
from fuseline.errors import StepTimeoutError
from fuseline.policies import RetryPolicy, StepPolicy, StepTimeoutPolicy


class FlakyThenOk(Step):
    def __init__(self, failures: int, exc: type[Exception] = RuntimeError, **kw: Any) -> None:
        super().__init__(**kw)
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def run_step(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return "ok"


def test_retry_until_success() -> None:
    step = FlakyThenOk(2, policies=[RetryPolicy(max_retries=3, wait=0)])
    run = Workflow(outputs=[step]).run()
    assert run.status is Status.SUCCEEDED
    assert step.calls == 3


def test_retry_gives_up_after_max_retries() -> None:
    step = FlakyThenOk(10, policies=[RetryPolicy(max_retries=2)])
    run = Workflow(outputs=[step]).run()
    assert run.status is Status.FAILED
    assert step.calls == 3
    assert run.steps[step.name].error is not None
    assert run.steps[step.name].error.message == "failure 3"


def test_retry_only_on_listed_exception_types() -> None:
    step = FlakyThenOk(1, exc=KeyError, policies=[RetryPolicy(3, retry_on=[ValueError])])
    run = Workflow(outputs=[step]).run()
    assert run.status is Status.FAILED
    assert step.calls == 1


def test_backoff_cap_and_jitter() -> None:
    policy = RetryPolicy(5, wait=1.0, backoff=2.0, max_wait=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    jittery = RetryPolicy(5, wait=1.0, jitter=0.5)
    delays = {jittery.delay(1) for _ in range(20)}
    assert all(1.0 <= d <= 1.5 for d in delays) and len(delays) > 1


def test_retry_waits_between_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("fuseline.policies.retry.time.sleep", slept.append)
    step = FlakyThenOk(2, policies=[RetryPolicy(3, wait=0.5, backoff=2)])
    Workflow(outputs=[step]).run()
    assert slept == [0.5, 1.0]


def test_async_retry() -> None:
    class AsyncFlaky(AsyncStep):
        calls = 0

        async def run_step(self) -> int:
            type(self).calls += 1
            if type(self).calls < 3:
                raise RuntimeError("again")
            return type(self).calls

    run = Workflow(outputs=[AsyncFlaky(policies=[RetryPolicy(5)])]).run()
    assert run.result == {"AsyncFlaky": 3}


def test_sync_timeout_returns_control_at_the_deadline() -> None:
    class Sleepy(Step):
        def run_step(self) -> None:
            time.sleep(3)

    started = time.monotonic()
    run = Workflow(outputs=[Sleepy(policies=[StepTimeoutPolicy(0.2)])]).run()
    elapsed = time.monotonic() - started
    assert run.status is Status.FAILED
    error = run.steps["Sleepy"].error
    assert error is not None and error.type == "StepTimeoutError"
    assert elapsed < 2.5  # control came back long before the body would have ended


def test_async_timeout_cancels_the_step() -> None:
    cancelled: list[bool] = []

    class Sleepy(AsyncStep):
        async def run_step(self) -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    run = Workflow(outputs=[Sleepy(policies=[StepTimeoutPolicy(0.1)])]).run()
    assert run.steps["Sleepy"].error is not None
    assert run.steps["Sleepy"].error.type == "StepTimeoutError"
    assert cancelled == [True]


def test_timeout_process_mode_kills_the_child() -> None:
    pid_file = f"/tmp/fuseline-timeout-{os.getpid()}"

    class Hang(Step):
        def run_step(self) -> None:
            with open(pid_file, "w") as handle:
                handle.write(str(os.getpid()))
            while True:
                time.sleep(0.05)

    run = Workflow(outputs=[Hang(policies=[StepTimeoutPolicy(0.5, mode="process")])]).run()
    assert run.steps["Hang"].error is not None
    assert run.steps["Hang"].error.type == "StepTimeoutError"
    with open(pid_file) as handle:
        child = int(handle.read())
    os.unlink(pid_file)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_timeout_process_mode_returns_results_and_errors() -> None:
    class Compute(Step):
        def run_step(self) -> dict[str, int]:
            return {"pid_differs": int(os.getpid() != parent)}

    class Fails(Step):
        def run_step(self) -> None:
            raise ValueError("inside child")

    parent = os.getpid()
    ok = Workflow(outputs=[Compute(policies=[StepTimeoutPolicy(5, mode="process")])]).run()
    assert ok.result == {"Compute": {"pid_differs": 1}}
    bad = Workflow(outputs=[Fails(policies=[StepTimeoutPolicy(5, mode="process")])]).run()
    assert bad.steps["Fails"].error is not None
    assert "ValueError: inside child" in bad.steps["Fails"].error.message


def test_retry_wraps_timeout_so_each_attempt_gets_the_full_time() -> None:
    class SlowOnce(Step):
        calls = 0

        def run_step(self) -> str:
            type(self).calls += 1
            if type(self).calls == 1:
                time.sleep(1)
            return "done"

    # Added in the "wrong" order on purpose: retries still wrap the timeout.
    step = SlowOnce(policies=[StepTimeoutPolicy(0.2), RetryPolicy(1)])
    run = Workflow(outputs=[step]).run()
    assert run.result == {"SlowOnce": "done"}
    assert SlowOnce.calls == 2


def test_timeout_error_is_typed() -> None:
    policy = StepTimeoutPolicy(1)
    step = FlakyThenOk(0)
    with pytest.raises(StepTimeoutError):
        policy.execute(step, lambda: time.sleep(2))
    with pytest.raises(ValueError, match="positive"):
        StepTimeoutPolicy(0)


def test_policies_publish_schema_settings() -> None:
    step = FlakyThenOk(0, name="s", policies=[RetryPolicy(2, wait=1), StepTimeoutPolicy(5)])
    schema = Workflow(outputs=[step]).to_schema().step("s")
    assert schema.max_attempts == 3
    assert schema.timeout_seconds == 5
    assert schema.retry is not None and schema.retry.wait == 1
    assert schema.policies == ("RetryPolicy", "StepTimeoutPolicy")


def test_custom_policy_attach_and_errors() -> None:
    class Mark(StepPolicy):
        pass

    policy = Mark()
    step = FlakyThenOk(0)
    step.add_policy(policy)
    assert policy.step is step
    with pytest.raises(TypeError):
        step.add_policy(object())  # type: ignore[arg-type]


def test_retry_policy_starts_no_retry_once_the_runner_says_stop() -> None:
    from fuseline.policies.stopping import stop_when

    calls: list[int] = []
    stop = {"now": False}

    class Flaky(Step):
        def run_step(self) -> None:
            calls.append(1)
            stop["now"] = True  # e.g. the worker learns here that its lease is gone
            raise RuntimeError("boom")

    step = Flaky(policies=[RetryPolicy(max_retries=5)])
    with stop_when(lambda: stop["now"]):
        run = Workflow(outputs=[step]).run()
    assert run.status is Status.FAILED
    assert len(calls) == 1  # without the check it would have run six times

    calls.clear()
    stop["now"] = False
    assert Workflow(outputs=[Flaky(policies=[RetryPolicy(max_retries=2)])]).run().status is (
        Status.FAILED
    )
    assert len(calls) == 3
