"""Long polls that wait without a transaction when nothing can have changed.

A worker handed a step by a dispatch asks for more at once. When no hint of
new work reached the broker process since that worker's last claim found
nothing, the new poll goes on waiting without a claim transaction; any hint,
a failed hand-off or one poll interval without news makes it look again.
For the same reason a report that made no step ready then claims nothing:
its transaction leaves the claim out.
Likewise a caller waiting for a run dispatched in this process does not read
it first while no hint says that a run ended.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from broker_contract_support import Backend, HandWorker, schema, wait_until

from fuseline.broker import StorageBroker
from fuseline.broker import _storage_broker as storage_broker_module
from fuseline.broker._sightings import Sightings
from fuseline.errors import WaitTimeoutError
from fuseline.messages import RunDetails, StepAssignment
from fuseline.status import Status
from fuseline.storage import PostgresStorage, SQLiteStorage
from fuseline.workflow import WorkflowSchema

SINGLE = schema("long-poll-single", steps=["only"])
CHAIN = schema("long-poll-chain", [("first", "second")])


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


def handed_a_step(
    broker: StorageBroker, worker: HandWorker, workflow: WorkflowSchema = SINGLE
) -> StepAssignment:
    """Let ``worker`` wait in a long poll and serve it with a dispatch of ``workflow``."""
    found: list[StepAssignment | None] = []
    poll = threading.Thread(target=lambda: found.append(worker.claim(wait=10)))
    poll.start()
    wait_until(lambda: len(broker._waiters) == 1, "the long poll to wait")
    broker.dispatch_workflow(workflow)
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


def test_a_report_with_nothing_new_to_claim_sends_no_claim(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [SINGLE])
    step = handed_a_step(patient, worker)
    before = claims.count

    assert worker.report(step, Status.SUCCEEDED, 1, claim_next=True) is None

    assert claims.count == before
    assert patient.get_run(step.instance_id).result == {"only": 1}


def test_a_report_claims_work_queued_since_the_last_empty_look(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [SINGLE])
    step = handed_a_step(patient, worker)
    queued = patient.dispatch_workflow(SINGLE)  # no one waits: the step stays queued

    following = worker.report(step, Status.SUCCEEDED, 1, claim_next=True)

    assert following is not None and following.instance_id == queued


def test_a_report_claims_the_successor_it_made_ready(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [CHAIN])
    first = handed_a_step(patient, worker, CHAIN)
    before = claims.count

    second = worker.report(first, Status.SUCCEEDED, 1, claim_next=True)

    assert second is not None and second.step_name == "second"
    assert second.instance_id == first.instance_id
    assert claims.count == before + 1


def test_a_batch_with_nothing_new_to_claim_sends_no_claim(
    patient: StorageBroker, claims: Claims
) -> None:
    worker = HandWorker(patient, [SINGLE])
    step = handed_a_step(patient, worker)
    before = claims.count

    report = worker.report_of(step, Status.SUCCEEDED, 2)
    reply = patient.report_steps(worker.worker_id, [report], claim=4)

    assert [outcome.accepted for outcome in reply.outcomes] == [True]
    assert reply.assignments == []
    assert claims.count == before
    assert patient.get_run(step.instance_id).result == {"only": 2}


class Reads:
    """Counts the broker's reads of whole runs (``get_run``)."""

    def __init__(self, broker: StorageBroker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = broker.get_run

        def counted(run_id: str) -> Any:
            self.count += 1
            return read(run_id)

        monkeypatch.setattr(broker, "get_run", counted)


def waited_for(broker: StorageBroker, run_id: str) -> RunDetails:
    """Wait for the run in a thread with a minute to spare; fail unless it ends in 15 s.

    A wait that ended only at its timeout would have missed the run's end.
    """
    found: list[RunDetails] = []
    waiter = threading.Thread(target=lambda: found.append(broker.wait_for_run(run_id, 60)))
    waiter.start()
    wait_until(lambda: found, "the wait for the run to end")
    return found[0]


def watching(broker: StorageBroker) -> None:
    """Let the storage's first wake-up of every waiter happen now, not during a test.

    The SQLite file watch wakes every waiter with its first look, and the
    PostgreSQL listener once it is connected (anything may have happened
    before it listened).
    """
    if isinstance(broker.storage, PostgresStorage):
        assert broker.storage.listening.wait(10), "the storage's listener never connected"
    if isinstance(broker.storage, SQLiteStorage):
        before = broker.storage.runs.generation
        broker.storage.runs.wait(before, 0)
        wait_until(lambda: broker.storage.runs.generation > before, "the file watch to start")


def finish_in_thread(worker: HandWorker, result: int) -> threading.Thread:
    """Claim and finish the one ready step once someone waits for its run."""

    def finish() -> None:
        step = worker.claim(wait=10)
        assert step is not None
        worker.succeed(step, result)

    thread = threading.Thread(target=finish)
    return thread


def test_waiting_for_a_run_dispatched_here_reads_nothing(
    patient: StorageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = HandWorker(patient, [SINGLE])
    watching(patient)
    run_id = patient.dispatch_workflow(SINGLE)
    reads = Reads(patient, monkeypatch)
    finisher = finish_in_thread(worker, 5)
    finisher.start()

    details = patient.wait_for_run(run_id, timeout=10)

    finisher.join(10)
    assert details.result == {"only": 5}
    assert reads.count == 0  # nor before waiting, nor after: the finish handed it over


def test_a_long_wait_in_short_pieces_reads_the_run_once_per_poll_interval(
    patient: StorageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How the HTTP server waits: one-second slices of one long wait.
    watching(patient)
    run_id = patient.dispatch_workflow(SINGLE)
    patient._unfinished.forget(run_id)  # as if another broker process dispatched it
    reads = Reads(patient, monkeypatch)

    for _ in range(3):
        assert patient.await_run(run_id, timeout=0.05) is None

    assert reads.count == 1  # the first piece read it unfinished; the others trusted that


def test_a_piece_of_a_wait_still_reads_a_run_that_may_have_ended(
    patient: StorageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    watching(patient)
    worker = HandWorker(patient, [SINGLE])
    waited = patient.dispatch_workflow(SINGLE)
    assert patient.await_run(waited, timeout=0.05) is None
    other = patient.dispatch_workflow(SINGLE)
    step = worker.claim()
    assert step is not None and step.instance_id == waited
    worker.succeed(step, 3)  # a run ended: what was seen unfinished may not be any more
    patient._finished.clear()  # as if it ended in another broker process
    reads = Reads(patient, monkeypatch)

    details = patient.await_run(waited, timeout=0.05)

    assert details is not None and details.result == {"only": 3}
    assert reads.count == 1
    assert patient.await_run(other, timeout=0.05) is None


def test_a_wait_that_times_out_still_says_how_far_the_run_got(
    patient: StorageBroker,
) -> None:
    run_id = patient.dispatch_workflow(SINGLE)

    with pytest.raises(WaitTimeoutError) as caught:
        patient.wait_for_run(run_id, timeout=0.2)

    assert caught.value.details == {"run_id": run_id, "status": "PENDING"}


def test_a_run_finished_by_another_broker_process_ends_the_wait(
    durable_backend: Backend,
) -> None:
    here, there = durable_backend.open(), durable_backend.open()
    here.storage.poll_interval = 30.0
    run_id = here.dispatch_workflow(SINGLE)
    finisher = finish_in_thread(HandWorker(there, [SINGLE]), 6)
    finisher.start()

    details = waited_for(here, run_id)

    finisher.join(10)
    assert details.result == {"only": 6}


def test_a_run_whose_end_went_unheard_is_read_within_the_poll_interval(
    durable_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = durable_backend.open(), durable_backend.open()
    here.storage.poll_interval = 0.3
    run_id = here.dispatch_workflow(SINGLE)
    worker = HandWorker(there, [SINGLE])
    with monkeypatch.context() as deaf:
        deaf.setattr(here.storage.runs, "fire", lambda: None)
        step = worker.claim()
        assert step is not None
        worker.succeed(step, 7)

    details = waited_for(here, run_id)

    assert details.result == {"only": 7}


def test_a_sighting_holds_for_its_generation_until_it_expires() -> None:
    seen = Sightings()
    seen.saw("w", generation=4, valid_until=10.0)

    assert seen.still_holds("w", 4, now=9.0) == 10.0
    assert seen.still_holds("w", 5, now=9.0) is None  # a hint came since
    assert seen.still_holds("w", 4, now=10.0) is None  # trusted no longer
    assert seen.still_holds("someone else", 4, now=9.0) is None
    seen.saw("x", generation=4, valid_until=12.0)
    seen.forget_older(now=11.0)
    assert len(seen) == 1 and seen.still_holds("x", 4, now=11.0) == 12.0
    seen.forget("x")
    assert seen.still_holds("x", 4, now=11.0) is None and len(seen) == 0
