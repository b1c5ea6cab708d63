"""A long poll right after one that found nothing skips the claim that would find nothing.

A worker handed a step by a dispatch asks for more at once. When no hint of
new work reached the broker process since that worker's last claim found
nothing, the new poll goes on waiting without a claim transaction; any hint,
a failed hand-off or one poll interval without news makes it look again.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from broker_contract_support import HandWorker, schema, wait_until

from fuseline.broker import StorageBroker
from fuseline.broker import _storage_broker as storage_broker_module
from fuseline.broker._handoff import EmptyLooks
from fuseline.messages import StepAssignment

SINGLE = schema("long-poll-single", steps=["only"])


class Claims:
    """Counts the claim transactions the broker runs for long polls and reports."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        claim = storage_broker_module.claim_steps

        def counted(*args: Any, **kwargs: Any) -> list[StepAssignment]:
            self.count += 1
            return claim(*args, **kwargs)

        monkeypatch.setattr(storage_broker_module, "claim_steps", counted)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> Claims:
    return Claims(monkeypatch)


@pytest.fixture
def patient(broker: StorageBroker) -> StorageBroker:
    """A broker whose waiting polls trust the hints for 30 s before looking again."""
    broker.storage.poll_interval = 30.0
    return broker


def handed_a_step(broker: StorageBroker, worker: HandWorker) -> StepAssignment:
    """Let ``worker`` wait in a long poll and serve it with a dispatch."""
    found: list[StepAssignment | None] = []
    poll = threading.Thread(target=lambda: found.append(worker.claim(wait=10)))
    poll.start()
    wait_until(lambda: len(broker._waiters) == 1, "the long poll to wait")
    broker.dispatch_workflow(SINGLE)
    poll.join(15)
    assert found and found[0] is not None, "the dispatch did not serve the waiting poll"
    return found[0]


def test_a_poll_after_a_hand_off_waits_without_a_claim(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [SINGLE])
    handed_a_step(patient, worker)
    before = claims.count

    assert worker.claim(wait=0.2) is None

    assert claims.count == before


def test_a_poll_after_a_hand_off_finds_work_queued_since(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [SINGLE])
    handed_a_step(patient, worker)
    queued = patient.dispatch_workflow(SINGLE)  # no one waits: the step stays queued

    found = worker.claim(wait=10)

    assert found is not None and found.instance_id == queued


def test_a_claim_without_waiting_always_looks(patient: StorageBroker, claims: Claims) -> None:
    worker = HandWorker(patient, [SINGLE])
    handed_a_step(patient, worker)
    before = claims.count

    assert worker.claim(wait=0) is None

    assert claims.count == before + 1


def test_work_whose_hint_was_lost_is_found_within_the_poll_interval(
    broker: StorageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.storage.poll_interval = 0.3
    worker = HandWorker(broker, [SINGLE])
    handed_a_step(broker, worker)
    # As if the notification from another broker process never arrived.
    with monkeypatch.context() as silent:
        silent.setattr(broker.storage.work, "fire", lambda: None)
        queued = broker.dispatch_workflow(SINGLE)

    found = worker.claim(wait=10)

    assert found is not None and found.instance_id == queued


def test_another_worker_s_empty_look_does_not_stand_for_this_one(
    patient: StorageBroker, claims: Claims
) -> None:
    worker, other = HandWorker(patient, [SINGLE]), HandWorker(patient, [SINGLE])
    handed_a_step(patient, worker)
    before = claims.count

    assert other.claim(wait=0.2) is None

    assert claims.count == before + 1


def test_an_empty_look_holds_for_its_generation_until_it_expires() -> None:
    looks = EmptyLooks()
    looks.found_nothing("w", generation=4, valid_until=10.0)

    assert looks.still_empty("w", 4, now=9.0) == 10.0
    assert looks.still_empty("w", 5, now=9.0) is None  # a hint came since
    assert looks.still_empty("w", 4, now=10.0) is None  # trusted no longer
    assert looks.still_empty("someone else", 4, now=9.0) is None
    looks.forget_older(now=9.0)
    assert len(looks) == 1
    looks.forget_older(now=10.0)
    assert len(looks) == 0
    looks.found_nothing("w", generation=4, valid_until=10.0)
    looks.forget("w")
    assert looks.still_empty("w", 4, now=9.0) is None
