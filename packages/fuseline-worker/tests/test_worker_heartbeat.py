"""When the heartbeat thread plans its beats, and when a newly held step wakes it.

Waking the thread for every step taken costs a thread switch per step, so
a new step wakes it only when its lease needs a beat before the one planned.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from worker_fakes import FakeBrokerClient, wait_until

from fuseline.messages import StepAssignment
from fuseline.worker._heartbeat import Heartbeat
from fuseline.worker._held import HeldStep, HeldSteps


def held_step(token: str, lease_seconds: float) -> HeldStep:
    deadline = datetime.now(UTC) + timedelta(seconds=lease_seconds)
    assignment = StepAssignment(
        workflow_id="wf", instance_id="run", step_name=token, lease_token=token, deadline=deadline
    )
    return HeldStep(assignment)


@pytest.fixture
def client() -> FakeBrokerClient:
    return FakeBrokerClient()


@pytest.fixture
def held() -> HeldSteps:
    return HeldSteps(4)


@pytest.fixture
def heartbeat(client: FakeBrokerClient, held: HeldSteps) -> Iterator[Heartbeat]:
    beating = Heartbeat(client, lambda: "worker", held, lambda step, reason: None)
    beating.start()
    wait_until(lambda: beating.next_beat is not None)
    yield beating
    beating.stop()


def test_a_step_whose_lease_allows_the_planned_beat_does_not_wake_the_thread(
    heartbeat: Heartbeat, held: HeldSteps
) -> None:
    planned = heartbeat.next_beat  # nothing held yet: the default interval
    step = held_step("long", lease_seconds=60.0)
    held.admit(step)

    assert heartbeat.nudge(step.lease_seconds) is False
    assert heartbeat.next_beat == planned


def test_a_step_with_a_short_lease_is_beaten_for_in_time(
    heartbeat: Heartbeat, held: HeldSteps, client: FakeBrokerClient
) -> None:
    planned = heartbeat.next_beat
    assert planned is not None
    step = held_step("short", lease_seconds=0.3)
    held.admit(step)

    assert heartbeat.nudge(step.lease_seconds) is True
    wait_until(lambda: (heartbeat.next_beat or planned) < planned)
    wait_until(lambda: ["short"] in client.calls.heartbeats, timeout=2.0)


def test_steps_without_a_deadline_or_a_fixed_interval_never_wake_the_thread(
    client: FakeBrokerClient, held: HeldSteps
) -> None:
    fixed = Heartbeat(client, lambda: "worker", held, lambda step, reason: None, interval=30.0)
    fixed.start()
    try:
        wait_until(lambda: fixed.next_beat is not None)
        assert fixed.nudge(0.3) is False
    finally:
        fixed.stop()
    beating = Heartbeat(client, lambda: "worker", held, lambda step, reason: None)
    assert beating.nudge(None) is False
