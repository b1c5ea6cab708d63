"""ProcessEngine against a fake broker client: the worker's own behaviour."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import pytest
from worker_fakes import FakeBrokerClient, wait_until

from fuseline import AsyncStep, Depends, Status, Step, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine as LazyProcessEngine
from fuseline.errors import (
    AuthenticationError,
    PayloadTooLargeError,
    SchemaConflictError,
    WorkerNotFoundError,
)
from fuseline.messages import StepAssignment, StepReport
from fuseline.policies import RetryPolicy, StepTimeoutPolicy
from fuseline.worker import ProcessEngine


class Add(Step):
    def run_step(self, x: int, y: int = 1) -> int:
        return x + y


class Double(Step):
    def run_step(self, value: int) -> int:
        return value * 2


def chain() -> Workflow:
    add, double = Add(), Double()
    add >> double
    return Workflow(outputs=[double], workflow_id="chain")


def test_engines_module_resolves_to_the_worker_engine() -> None:
    assert LazyProcessEngine is ProcessEngine


def test_work_returns_at_once_when_nothing_is_ready() -> None:
    client = FakeBrokerClient()
    engine = ProcessEngine(client, [chain()])
    started = time.monotonic()
    assert engine.work() == 0
    assert time.monotonic() - started < 5
    assert engine.worker_id == "worker-1"
    assert [s.workflow_id for s in client.calls.registered[0]] == ["chain"]
    # Registration happens once per engine.
    engine.work()
    assert len(client.calls.registered) == 1


def test_each_run_gets_its_own_inputs_and_params_stay_untouched() -> None:
    workflow = chain()
    workflow.params["y"] = 100
    client = FakeBrokerClient()
    runs = {x: client.start_run(workflow, {"x": x, "y": x}) for x in range(1, 6)}
    engine = ProcessEngine(client, [workflow], concurrency=3)
    assert engine.work() == 10
    for x, run_id in runs.items():
        details = client.details(run_id)
        assert details.status is Status.SUCCEEDED
        assert details.result == {"Double": (x + x) * 2}
    assert workflow.params == {"y": 100}


def test_workflow_params_are_defaults_for_runs_dispatched_without_them() -> None:
    workflow = chain()
    workflow.params["y"] = 10
    client = FakeBrokerClient()
    run_id = client.start_run(workflow, {"x": 1})
    client.runs[run_id].inputs.pop("y")  # as if dispatched straight to a broker
    ProcessEngine(client, workflow).work()
    assert client.details(run_id).result == {"Double": 22}


def test_a_step_that_changes_its_arguments_in_place_changes_nothing_the_broker_holds() -> None:
    class Source(Step):
        # Any: typed arguments are validated into new objects, these are passed as they are.
        def run_step(self, config: Any) -> dict[str, list[int]]:
            config["seen"].append(1)  # the run's inputs, changed in place
            return {"items": [1]}

    source = Source()

    class Grow(Step):
        def run_step(self, value: Any = Depends(source)) -> int:
            value["items"].append(2)  # a predecessor's result, changed in place
            return len(value["items"])

    grow = Grow()
    source >> grow
    workflow = Workflow(outputs=[grow], workflow_id="in-place")
    workflow.params["config"] = {"seen": []}
    broker = MemoryBroker()
    client = LocalBrokerClient(broker)
    first = client.dispatch_workflow(workflow, {"config": {"seen": [0]}})
    second = client.dispatch_workflow(workflow)  # falls back to the params

    assert ProcessEngine(client, [workflow]).work() == 4

    for run_id in (first, second):
        details = client.get_run(run_id)
        assert details.result == {"Grow": 2}
        assert details.steps["Source"].result == {"items": [1]}
    assert client.get_run(first).inputs == {"config": {"seen": [0]}}
    assert workflow.params == {"config": {"seen": []}}


class Gate:
    """Counts steps inside run_step at once and can hold them there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.release = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def fan_workflow(gate: Gate, width: int) -> Workflow:
    class Source(Step):
        def run_step(self) -> int:
            return 3

    class Branch(Step):
        def run_step(self, value: int) -> int:
            gate.enter()
            try:
                gate.release.wait(10)
                return value + 1
            finally:
                gate.leave()

    source = Source()
    branches = [Branch(name=f"branch_{i}") for i in range(width)]

    class Sum(Step):
        def run_step(self, first: Any = Depends(branches[0])) -> Any:
            return first

    total = Sum()
    for branch in branches:
        source >> branch
        branch >> total
    return Workflow(outputs=[total], workflow_id="fan")


def test_a_step_left_ready_beside_the_one_a_report_claimed_is_taken_at_once() -> None:
    # The source's report claims one branch; the other is left for the work
    # loop, which waits for a report to settle. The branches only finish
    # together, so the loop must wake for a report that handed its slot on.
    together = threading.Barrier(2, timeout=5)

    class Source(Step):
        def run_step(self) -> int:
            time.sleep(0.1)  # let the work loop find nothing else and wait
            return 1

    class Branch(Step):
        def run_step(self, value: int) -> int:
            together.wait()
            return value

    source, left, right = Source(), Branch(name="left"), Branch(name="right")
    source >> left
    source >> right
    workflow = Workflow(outputs=[left, right], workflow_id="pair")
    client = FakeBrokerClient()
    run_id = client.start_run(workflow)

    assert ProcessEngine(client, [workflow], concurrency=2).work() == 3
    assert client.details(run_id).status is Status.SUCCEEDED


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounds_how_many_steps_run_at_once(concurrency: int) -> None:
    gate = Gate()
    workflow = fan_workflow(gate, width=3)
    client = FakeBrokerClient()
    run_id = client.start_run(workflow)
    engine = ProcessEngine(client, [workflow], concurrency=concurrency)
    worker = threading.Thread(target=engine.work)
    worker.start()
    wait_until(lambda: gate.inside == concurrency)
    time.sleep(0.05)  # give an over-eager worker the chance to start one more
    assert gate.inside == concurrency
    gate.release.set()
    worker.join(10)
    assert not worker.is_alive()
    assert gate.most == concurrency
    assert client.details(run_id).result == {"Sum": 4}


def test_async_steps_run_concurrently_on_the_worker_loop() -> None:
    seen: list[str] = []

    class Wait(AsyncStep):
        async def run_step(self, tag: str) -> str:
            seen.append(threading.current_thread().name)
            await asyncio.sleep(0.2)
            return tag.upper()

    workflow = Workflow(outputs=[Wait(name="wait")], workflow_id="async")
    client = FakeBrokerClient()
    runs = [client.start_run(workflow, {"tag": t}) for t in ("a", "b", "c", "d")]
    started = time.monotonic()
    assert ProcessEngine(client, [workflow], concurrency=4).work() == 4
    elapsed = time.monotonic() - started
    assert [client.details(r).result for r in runs] == [
        {"wait": "A"},
        {"wait": "B"},
        {"wait": "C"},
        {"wait": "D"},
    ]
    assert set(seen) == {"fuseline-worker-loop"}
    assert elapsed < 0.2 * 4  # they overlapped


def test_policies_run_on_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    class Flaky(Step):
        def run_step(self) -> str:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("not yet")
            return "ok"

    class Slow(Step):
        def run_step(self) -> None:
            time.sleep(2)

    flaky = Flaky(policies=[RetryPolicy(max_retries=2)])
    slow = Slow(policies=[StepTimeoutPolicy(0.1)])
    workflow = Workflow(outputs=[flaky, slow], steps=[flaky, slow], workflow_id="policies")
    client = FakeBrokerClient()
    run_id = client.start_run(workflow)
    with caplog.at_level(logging.INFO, logger="fuseline.worker"):
        ProcessEngine(client, [workflow], concurrency=2).work()
    details = client.details(run_id)
    assert details.steps["Flaky"].status is Status.SUCCEEDED
    assert len(attempts) == 3
    slow_record = details.steps["Slow"]
    assert slow_record.status is Status.FAILED
    assert slow_record.error is not None
    assert slow_record.error.type == "StepTimeoutError"
    assert "0.1 seconds" in slow_record.error.message
    assert "FAILED in" in caplog.text and "StepTimeoutError" in caplog.text


def test_failures_are_reported_with_type_message_and_traceback() -> None:
    class Boom(Step):
        def run_step(self) -> None:
            raise ValueError("bad input")

    class Odd(Step):
        def run_step(self) -> object:
            return object()

    boom, odd = Boom(), Odd()
    workflow = Workflow(outputs=[boom, odd], steps=[boom, odd], workflow_id="errors")
    client = FakeBrokerClient()
    run_id = client.start_run(workflow)
    ProcessEngine(client, [workflow]).work()
    steps = client.details(run_id).steps
    boom_error = steps["Boom"].error
    assert boom_error is not None
    assert (boom_error.type, boom_error.message) == ("ValueError", "bad input")
    assert boom_error.traceback is not None and "raise ValueError" in boom_error.traceback
    odd_error = steps["Odd"].error
    assert odd_error is not None and odd_error.type == "ResultNotSerializableError"


def test_a_step_of_an_unknown_workflow_version_fails_with_a_clear_error() -> None:
    workflow = chain()
    client = FakeBrokerClient()
    run_id = client.start_run(workflow, {"x": 1})

    def pretend_other_version(assignment: StepAssignment) -> None:
        object.__setattr__(assignment, "workflow_version", "2")

    client.on_claim = pretend_other_version
    ProcessEngine(client, [workflow]).work()
    error = client.details(run_id).steps["Add"].error
    assert error is not None and error.type == "WorkflowNotFoundError"
    assert "'chain' version '2'" in error.message


class Sleepy(Step):
    def run_step(self) -> str:
        time.sleep(1.0)
        return "done"


@pytest.mark.parametrize("beating", [True, False])
def test_heartbeats_keep_the_lease_of_a_long_step(beating: bool) -> None:
    workflow = Workflow(outputs=[Sleepy()], workflow_id="long")
    client = FakeBrokerClient(lease=0.3, expire_leases=True)
    run_id = client.start_run(workflow)
    ProcessEngine(client, [workflow], heartbeat_interval=None if beating else 30).work()
    if beating:
        assert client.details(run_id).result == {"Sleepy": "done"}
        assert len(client.calls.heartbeats) >= 3
        assert client.calls.rejected == []
    else:  # proof that the check above can fail: a lapsed lease is refused
        assert [r.step_name for r in client.calls.rejected] == ["Sleepy"]


def test_a_lost_lease_is_never_reported(caplog: pytest.LogCaptureFixture) -> None:
    proceed = threading.Event()

    class Held(Step):
        def run_step(self) -> str:
            proceed.wait(10)
            return "late"

    workflow = Workflow(outputs=[Held()], workflow_id="lost")
    client = FakeBrokerClient(lease=0.3)
    client.on_claim = lambda a: client.lose_at_heartbeat.add(a.lease_token or "")
    client.start_run(workflow)
    engine = ProcessEngine(client, [workflow])
    worker = threading.Thread(target=engine.work)
    with caplog.at_level(logging.INFO, logger="fuseline.worker"):
        worker.start()
        wait_until(lambda: "its lease was lost" in caplog.text)
        proceed.set()
        worker.join(10)
    assert not worker.is_alive()
    assert client.calls.reports == [] and client.calls.rejected == []
    assert "dropped after" in caplog.text


def test_an_async_step_of_a_cancelled_run_is_cancelled() -> None:
    cancelled = threading.Event()

    class Forever(AsyncStep):
        async def run_step(self) -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    workflow = Workflow(outputs=[Forever()], workflow_id="cancel")
    client = FakeBrokerClient(lease=0.3)
    client.on_claim = lambda a: client.cancel_at_heartbeat.add(a.lease_token or "")
    client.start_run(workflow)
    started = time.monotonic()
    assert ProcessEngine(client, [workflow]).work() == 0
    assert cancelled.is_set()
    assert time.monotonic() - started < 10
    assert client.calls.reports == []


def test_reports_wait_out_a_broker_outage(caplog: pytest.LogCaptureFixture) -> None:
    workflow = chain()
    client = FakeBrokerClient()
    run_id = client.start_run(workflow, {"x": 2})
    client.unavailable("report_step", 3)
    client.unavailable("get_steps", 2)
    with caplog.at_level(logging.INFO, logger="fuseline.worker"):
        ProcessEngine(client, [workflow], max_backoff=0.05).work()
    assert client.details(run_id).result == {"Double": 6}
    assert "broker unreachable" in caplog.text
    assert client.failures == {"report_step": [], "get_steps": []}


def test_registration_waits_for_the_broker() -> None:
    client = FakeBrokerClient()
    client.unavailable("register_worker", 2)
    engine = ProcessEngine(client, [chain()], max_backoff=0.05)
    assert engine.work() == 0
    assert engine.worker_id == "worker-1"


def test_a_refused_token_stops_the_worker_with_the_error() -> None:
    client = FakeBrokerClient()
    client.fail("register_worker", AuthenticationError("bad token"))
    with pytest.raises(AuthenticationError):
        ProcessEngine(client, [chain()]).work()


def test_a_token_refused_while_reporting_stops_the_worker() -> None:
    workflow = chain()
    client = FakeBrokerClient()
    client.start_run(workflow, {"x": 1})
    client.fail("report_step", AuthenticationError("token revoked"))
    with pytest.raises(AuthenticationError, match="token revoked"):
        ProcessEngine(client, [workflow]).work()


def test_a_worker_the_broker_forgot_registers_again() -> None:
    workflow = chain()
    client = FakeBrokerClient()
    run_id = client.start_run(workflow, {"x": 1})
    engine = ProcessEngine(client, [workflow])
    engine.register()
    client.fail("get_steps", WorkerNotFoundError("unknown worker"))
    engine.work()
    assert engine.worker_id == "worker-2"
    assert client.details(run_id).status is Status.SUCCEEDED


def test_a_result_the_broker_refuses_is_reported_as_a_failure() -> None:
    workflow = chain()
    client = FakeBrokerClient()
    run_id = client.start_run(workflow, {"x": 1})
    client.fail("report_step", PayloadTooLargeError("result is over 1 MiB"))
    ProcessEngine(client, [workflow]).work()
    add = client.details(run_id).steps["Add"]
    assert add.status is Status.FAILED
    assert add.error is not None and add.error.type == "PayloadTooLargeError"


def test_serve_waits_for_work_and_stops_gracefully() -> None:
    started = threading.Event()
    finish = threading.Event()

    class Slow(Step):
        def run_step(self, x: int) -> int:
            started.set()
            finish.wait(10)
            return x

    workflow = Workflow(outputs=[Slow()], workflow_id="serve")
    client = FakeBrokerClient()
    engine = ProcessEngine(client, [workflow], poll_wait=0.05)
    count: list[int] = []
    worker = threading.Thread(target=lambda: count.append(engine.serve(handle_signals=False)))
    worker.start()
    wait_until(lambda: len(client.calls.claims) >= 2)  # it is polling
    run_id = client.start_run(workflow, {"x": 7})
    started.wait(10)
    engine.stop()
    client.start_run(workflow, {"x": 8})  # must not be taken any more
    time.sleep(0.1)
    assert worker.is_alive()  # still finishing the held step
    finish.set()
    worker.join(10)
    assert not worker.is_alive()
    assert count == [1]
    assert client.details(run_id).result == {"Slow": 7}
    assert [r.step_name for r in client.calls.reports] == ["Slow"]


class Forever(AsyncStep):
    async def run_step(self) -> None:
        await asyncio.sleep(30)


@pytest.mark.parametrize("how", ["immediately", "after the grace period"])
def test_a_stop_can_abandon_held_steps(how: str) -> None:
    workflow = Workflow(outputs=[Forever()], workflow_id="forever")
    client = FakeBrokerClient()
    client.start_run(workflow)
    engine = ProcessEngine(client, [workflow], poll_wait=0.05, grace_period=0.2)
    worker = threading.Thread(target=lambda: engine.serve(handle_signals=False))
    worker.start()
    wait_until(lambda: len(client.leases) == 1)
    started = time.monotonic()
    engine.stop(immediately=how == "immediately")
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert client.calls.reports == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="child processes need os.fork")
def test_sync_steps_can_run_in_killable_child_processes() -> None:
    class Where(Step):
        def run_step(self) -> int:
            return os.getpid()

    class Hang(Step):
        def run_step(self) -> None:
            time.sleep(30)

    where, hang = Where(), Hang()
    workflow = Workflow(outputs=[where, hang], steps=[where, hang], workflow_id="child")
    client = FakeBrokerClient(lease=0.3)
    client.on_claim = lambda a: (
        client.lose_at_heartbeat.add(a.lease_token or "") if a.step_name == "Hang" else None
    )
    run_id = client.start_run(workflow)
    started = time.monotonic()
    ProcessEngine(client, [workflow], concurrency=2, sync_steps="process").work()
    assert time.monotonic() - started < 10  # the hanging child was killed
    details = client.details(run_id)
    pid = details.steps["Where"].result
    assert isinstance(pid, int) and pid != os.getpid()
    assert [r.step_name for r in client.calls.reports] == ["Where"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="child processes need os.fork")
def test_a_child_process_reports_failures_like_a_thread() -> None:
    class Boom(Step):
        def run_step(self) -> None:
            raise KeyError("missing")

    class Dies(Step):
        def run_step(self) -> None:
            os._exit(3)

    boom, dies = Boom(), Dies()
    workflow = Workflow(outputs=[boom, dies], steps=[boom, dies], workflow_id="child-fail")
    client = FakeBrokerClient()
    run_id = client.start_run(workflow)
    ProcessEngine(client, [workflow], sync_steps="process").work()
    steps = client.details(run_id).steps
    assert steps["Boom"].error is not None and steps["Boom"].error.type == "KeyError"
    assert steps["Dies"].error is not None and steps["Dies"].error.type == "StepProcessDied"
    assert "exited with code 3" in steps["Dies"].error.message


def test_one_engine_works_in_one_thread_at_a_time() -> None:
    gate = Gate()
    workflow = fan_workflow(gate, width=1)
    client = FakeBrokerClient()
    client.start_run(workflow)
    engine = ProcessEngine(client, [workflow])
    worker = threading.Thread(target=engine.work)
    worker.start()
    wait_until(lambda: gate.inside == 1)
    with pytest.raises(RuntimeError, match="already working"):
        engine.work()
    gate.release.set()
    worker.join(10)


def test_settings_are_checked() -> None:
    client = FakeBrokerClient()
    with pytest.raises(ValueError, match="concurrency"):
        ProcessEngine(client, [chain()], concurrency=0)
    with pytest.raises(ValueError, match="sync_steps"):
        ProcessEngine(client, [chain()], sync_steps="fiber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one workflow"):
        ProcessEngine(client, [])
    with pytest.raises(TypeError, match="BrokerClient"):
        ProcessEngine(object(), [chain()])
    first, second = chain(), Workflow(outputs=[Add()], workflow_id="chain")
    with pytest.raises(SchemaConflictError, match="bump the version"):
        ProcessEngine(client, [first, second])


def test_a_stop_asked_for_before_serving_is_kept() -> None:
    client = FakeBrokerClient()
    engine = ProcessEngine(client, [chain()], poll_wait=5)
    engine.stop()
    started = time.monotonic()
    assert engine.serve(handle_signals=False) == 0
    assert time.monotonic() - started < 4
    # The next call starts afresh.
    run_id = client.start_run(chain(), {"x": 1})
    assert engine.work() == 2
    assert client.details(run_id).status is Status.SUCCEEDED


def test_heartbeats_keep_a_finished_step_s_lease_while_its_report_waits() -> None:
    class Quick(Step):
        def run_step(self) -> str:
            return "done"

    workflow = Workflow(outputs=[Quick()], workflow_id="quick")
    client = FakeBrokerClient(lease=0.3, expire_leases=True)
    run_id = client.start_run(workflow)
    # Down for a second (more than three leases) while the report waits.
    client.down_for("report_step", 1.0)
    ProcessEngine(client, [workflow], max_backoff=0.15).work()
    assert client.details(run_id).result == {"Quick": "done"}
    assert client.calls.rejected == []
    assert len(client.calls.heartbeats) >= 3


class _SlowReports(FakeBrokerClient):
    """A fake whose first report hangs until a second report has been delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.first_sent = threading.Event()
        self.second_delivered = threading.Event()
        self.first_waited = False
        self._entered = 0
        self._entered_lock = threading.Lock()

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        with self._entered_lock:
            self._entered += 1
            first = self._entered == 1
        if first:
            self.first_sent.set()
            self.first_waited = self.second_delivered.wait(10)
            return super().report_step(worker_id, report, claim_next=claim_next)
        answer = super().report_step(worker_id, report, claim_next=claim_next)
        self.second_delivered.set()
        return answer


def test_a_slow_report_does_not_hold_up_the_others() -> None:
    client = _SlowReports()

    class One(Step):
        def run_step(self, x: int) -> int:
            # The second step ends while the first one's report is in flight.
            # (Reports that wait together go together, in one request.)
            if x == 2:
                assert client.first_sent.wait(10)
            return x

    workflow = Workflow(outputs=[One()], workflow_id="one")
    runs = [client.start_run(workflow, {"x": x}) for x in (1, 2)]
    engine = ProcessEngine(client, [workflow], concurrency=2)
    assert engine.work() == 2
    # The second report went through while the first was still waiting for its answer.
    assert client.first_waited
    assert [client.details(r).result for r in runs] == [{"One": 1}, {"One": 2}]
