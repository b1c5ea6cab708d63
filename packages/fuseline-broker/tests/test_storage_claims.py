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
