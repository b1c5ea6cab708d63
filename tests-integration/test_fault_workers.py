"""Workers that die, steps that kill their worker, and steps that overrun their timeout.

Fault cases 1, 4 and 5 of the reliability suite (docs/reliability.md). Each
test runs on a SQLite file and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import itertools
import random
import time

import fault_flows as flows
import pytest
from fault_checker import Execution, assert_sound, check, expect_fan, read_ledger
from fault_harness import WORKER_TOKEN, FaultCluster, wait_until

from fuseline import RunDetails, Status, StepReport
from fuseline.clients import HttpBrokerClient
from fuseline.errors import LeaseConflictError

CONCURRENCY = 4


@pytest.mark.chaos
def test_fault_1_killed_workers_lose_nothing(chaos_cluster: FaultCluster) -> None:
    """SIGKILL random workers during 100 fan-out/fan-in runs; a supervisor restarts them."""
    fc = chaos_cluster
    rng = random.Random(20240601)  # noqa: S311 - a repeatable chaos schedule
    fc.start_workers(3, "--concurrency", str(CONCURRENCY))
    with fc.supervising():
        fc.dispatch(flows.fan, 100, lambda i: {"size": 2 + i % 5})
        deadline = time.monotonic() + 120
        while fc.open_runs() and time.monotonic() < deadline:
            # The chaos schedule's pause between kills: short enough that several
            # kills land even when the runs go fast.
            time.sleep(rng.uniform(0.3, 0.8))
            fc.kill_random(rng)
        details = fc.wait_all(timeout=120)
    figures = check(fc, details, "worker-kills", expect=expect_fan)
    assert_sound(figures)
    assert figures.kills >= 3, "the runs finished before the chaos began; make them longer"
    assert figures.succeeded == 100
    # Each kill can cost at most the steps the worker held at that moment.
    assert figures.duplicates <= figures.kills * CONCURRENCY
    assert figures.crash_executions == figures.executions - figures.steps_accepted


@pytest.mark.chaos
def test_fault_4_a_poison_step_fails_its_run_and_others_flow(chaos_cluster: FaultCluster) -> None:
    """A step that SIGKILLs its worker every time is FAILED after its attempts; others finish."""
    fc = chaos_cluster
    fc.start_workers(2, "--concurrency", "2")
    with fc.supervising():
        (poisoned,) = fc.dispatch(flows.poison, 1)
        fc.dispatch(flows.fan, 20, lambda i: {"size": 3})
        details = fc.wait_all(timeout=90)

    def expect(key: str, run: RunDetails) -> str | None:
        if key != poisoned:
            return expect_fan(key, run)
        step = run.steps["poison"]
        if run.status is not Status.FAILED or step.status is not Status.FAILED:
            return f"the poisoned run ended {run.status.value}, its step {step.status.value}"
        if step.error is None or step.error.type != "LeaseExpired":
            return f"the poison step failed with {step.error}"
        if step.attempts != flows.POISON_ATTEMPTS:
            return f"the poison step was handed out {step.attempts} times"
        return None

    figures = check(fc, details, "poison-step", expect=expect)
    assert_sound(figures)
    deaths = [e for e in _ledger(fc) if e.key == poisoned]
    assert len(deaths) == flows.POISON_ATTEMPTS
    assert len({e.pid for e in deaths}) == flows.POISON_ATTEMPTS, "one death per worker"
    assert {e.pid for e in deaths} <= fc.crashed_pids()
    assert figures.succeeded == 20 and figures.failed == 1


def _ledger(fc: FaultCluster) -> list[Execution]:
    return read_ledger(fc.ledger)


def test_fault_5_overrunning_steps_time_out_and_late_results_are_refused(
    chaos_cluster: FaultCluster,
) -> None:
    """Timeouts fire near the deadline, retry as configured, and late successes change nothing."""
    fc = chaos_cluster

    # A hand-written worker takes a step with a one-second lease and goes quiet.
    by_hand = HttpBrokerClient(fc.cluster.server.url, WORKER_TOKEN)
    try:
        worker_id = by_hand.register_worker([flows.quick.to_schema()], name="by-hand")
        (late_key,) = fc.dispatch(flows.quick, 1)
        assignment = by_hand.get_step(worker_id, wait=10)
        assert assignment is not None and assignment.attempt == 1
        run_id = fc.runs[late_key]

        def requeued() -> bool:
            step = fc.client.get_run(run_id).steps["quick"]
            return step.status is Status.PENDING and step.attempts == 1

        wait_until(requeued, 15, "the expired lease to put the step back in the queue")
        late = StepReport(
            workflow_id=assignment.workflow_id,
            instance_id=assignment.instance_id,
            step_name=assignment.step_name,
            state=Status.SUCCEEDED,
            result={"exec": "late", "value": "too late", "pid": 0},
            lease_token=assignment.lease_token,
        )
        with pytest.raises(LeaseConflictError):
            by_hand.report_step(worker_id, late)
        lost = by_hand.keep_alive(worker_id, [assignment.lease_token or ""])
        assert [ref.lease_token for ref in lost.lost] == [assignment.lease_token]
        after = fc.client.get_run(run_id).steps["quick"]
        assert after.status is Status.PENDING and after.result is None
    finally:
        by_hand.close()

    fc.start_workers(1, "--concurrency", "2")
    (failing,) = fc.dispatch(flows.overrun, 1, lambda i: {"recover": False})
    (recovering,) = fc.dispatch(flows.overrun, 1, lambda i: {"recover": True})
    details = fc.wait_all(timeout=60)

    def expect(key: str, run: RunDetails) -> str | None:
        if key == late_key:
            quick = run.steps["quick"]
            if run.status is not Status.SUCCEEDED or quick.attempts != 2:
                return f"the requeued step ended {run.status.value} after {quick.attempts}"
            return None
        step = run.steps["overrun"]
        if key == recovering:
            return None if run.status is Status.SUCCEEDED else f"ended {run.status.value}"
        if run.status is not Status.FAILED or step.error is None:
            return f"the overrunning run ended {run.status.value}"
        if step.error.type != "StepTimeoutError" or step.attempts != 1:
            return f"failed with {step.error.type} after {step.attempts} hand-outs"
        return None

    # The first try of the recovering run ends (successfully) after its
    # timeout; its result must never replace the retry's accepted one.
    ledger_has_late_end = wait_until(
        lambda: [
            e
            for e in _ledger(fc)
            if e.key == recovering and e.ended and e.ended - e.started > flows.OVERRUN_TIMEOUT
        ],
        15,
        "the overrunning first try to finish late",
    )
    details[recovering] = fc.client.get_run(fc.runs[recovering])
    figures = check(
        fc,
        details,
        "step-timeouts",
        expect=expect,
        retrying_steps=frozenset({"overrun"}),
        extra={"late_report_refused": True},
    )
    assert_sound(figures)

    tries = [e for e in _ledger(fc) if e.key == failing]
    assert len(tries) == flows.OVERRUN_TRIES
    gaps = [b.started - a.started for a, b in itertools.pairwise(tries)]
    # Each try is given up at its deadline: not before it, and not long after.
    assert all(flows.OVERRUN_TIMEOUT * 0.9 <= gap < flows.OVERRUN_TIMEOUT + 2.0 for gap in gaps), (
        gaps
    )
    accepted = details[recovering].steps["overrun"].result
    late_try = ledger_has_late_end[0]
    assert accepted["exec"] != late_try.exec_id
