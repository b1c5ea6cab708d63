"""Claiming steps together with their runs, on every storage backend.

``claim_steps_with_runs`` is what every claim goes through. PostgreSQL
answers it with one statement that also brings the runs and the clock along;
these cases pin down that the answer is the same as claiming and then
reading, whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable

from broker_contract_support import HandWorker, schema

from fuseline.broker import StorageBroker
from fuseline.status import Status
from fuseline.storage import StorageTransaction, StoredRun, StoredStep


def _token_maker() -> Callable[[], str]:
    counter = iter(range(1000))
    return lambda: f"token-{next(counter)}"


def test_claimed_steps_come_with_their_runs_and_the_clock_they_were_leased_by(
    broker: StorageBroker,
) -> None:
    chain = schema("claims-chain", [("a", "b")])
    HandWorker(broker, [chain])
    run_ids = [broker.dispatch_workflow(chain, {"n": n}) for n in range(3)]
    worker_id = broker.register_worker([chain])

    def body(t: StorageTransaction) -> tuple[list[StoredStep], dict[str, StoredRun], float]:
        steps, runs = t.claim_steps_with_runs(worker_id, [chain.key], 2, _token_maker())
        return steps, runs, t.now()

    steps, runs, now = broker.storage.atomic(body)

    # The two oldest steps, oldest first, leased to the worker with tokens of their own.
    assert [(s.run_id, s.step_name, s.status) for s in steps] == [
        (run_id, "a", Status.RUNNING) for run_id in run_ids[:2]
    ]
    assert len({s.lease_token for s in steps}) == 2
    assert all(s.worker_id == worker_id and s.attempt == 1 for s in steps)
    # Each comes with its run as stored.
    assert sorted(runs) == sorted(run_ids[:2])
    assert [runs[s.run_id].inputs for s in steps] == [{"n": 0}, {"n": 1}]
    # The transaction's clock is the one the leases were computed from.
    for step in steps:
        assert step.started_at == now
        assert step.deadline == now + step.lease_seconds


def test_runs_the_caller_holds_may_be_left_out_but_nothing_else(broker: StorageBroker) -> None:
    chain = schema("claims-known", [("a", "b")])
    HandWorker(broker, [chain])
    held, other = (broker.dispatch_workflow(chain, {"n": n}) for n in range(2))
    worker_id = broker.register_worker([chain])

    steps, runs = broker.storage.atomic(
        lambda t: t.claim_steps_with_runs(
            worker_id,
            [chain.key],
            5,
            _token_maker(),
            known=[held],
        )
    )

    assert sorted(s.run_id for s in steps) == sorted([held, other])
    assert other in runs and runs[other].inputs == {"n": 1}
    assert set(runs) <= {held, other}


def test_a_claim_with_nothing_ready_returns_nothing(broker: StorageBroker) -> None:
    chain = schema("claims-none", [("a", "b")])
    worker_id = broker.register_worker([chain])

    found = broker.storage.atomic(
        lambda t: t.claim_steps_with_runs(worker_id, [chain.key], 3, _token_maker())
    )

    assert found == ([], {})


def test_a_claim_that_starts_runs_leaves_cancelled_ones_alone(broker: StorageBroker) -> None:
    # The first hand-out starts a run; on PostgreSQL inside the claim's own
    # statement. A run cancelled before it is claimed keeps its status.
    single = schema("claims-start", steps=["a"])
    HandWorker(broker, [single])
    started, cancelled, untouched = (broker.dispatch_workflow(single, {"n": n}) for n in range(3))
    worker_id = broker.register_worker([single])

    def body(t: StorageTransaction) -> tuple[list[StoredStep], dict[str, StoredRun]]:
        run = t.get_run(cancelled, lock=True)
        assert run is not None
        run.status = Status.CANCELLED
        t.update_run(run)  # as if cancelled, its step still queued
        return t.claim_steps_with_runs(worker_id, [single.key], 2, _token_maker(), start=True)

    steps, runs = broker.storage.atomic(body)
    assert [s.run_id for s in steps] == [started, cancelled]
    assert runs[started].inputs == {"n": 0}
    stored = broker.storage.atomic(
        lambda t: t.runs_by_id([started, cancelled, untouched]), write=False
    )
    assert stored[started].status is Status.RUNNING
    assert stored[cancelled].status is Status.CANCELLED
    assert stored[untouched].status is Status.PENDING


def test_after_a_last_claim_the_transaction_still_reads(broker: StorageBroker) -> None:
    chain = schema("claims-last", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain, {"n": 7})
    first = worker.claim()
    assert first is not None
    worker.succeed(first, {"n": 7})  # b is queued now
    worker_id = broker.register_worker([chain])

    def body(t: StorageTransaction) -> tuple[list[StoredStep], list[dict[str, object]]]:
        steps, _ = t.claim_steps_with_runs(
            worker_id, [chain.key], 1, _token_maker(), start=True, last=True
        )
        return steps, t.results_for([(run_id, ["a"])])

    steps, results = broker.storage.atomic(body)
    assert [(s.run_id, s.step_name) for s in steps] == [(run_id, "b")]
    assert results == [{"a": {"n": 7}}]
    (row,) = [
        row
        for row in broker.storage.atomic(lambda t: t.steps_of(run_id), write=False)
        if row.step_name == "b"
    ]
    assert row.status is Status.RUNNING and row.worker_id == worker_id
