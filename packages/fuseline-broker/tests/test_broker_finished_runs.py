"""A run's end reaches callers waiting in the same process without another read.

The transaction that finishes a run hands the run's rows to this process's
waiters; what they get must equal what reading the storage gives.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from broker_contract_support import HandWorker, schema

from fuseline.broker import StorageBroker
from fuseline.errors import RunNotFoundError, WaitTimeoutError
from fuseline.status import Status
from fuseline.storage import MemoryStorage, StorageTransaction


def test_a_waiter_gets_what_reading_the_run_gives(broker: StorageBroker) -> None:
    diamond = schema("finished-diamond", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    worker = HandWorker(broker, [diamond])
    run_id = broker.dispatch_workflow(diamond, {"n": 1})
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(broker.wait_for_run, run_id, 20.0)
        a = worker.claim()
        assert a is not None
        worker.succeed(a, 1)
        for parent in worker.claim_all():
            worker.succeed(parent, parent.step_name)
        d = worker.claim()
        assert d is not None
        worker.succeed(d, {"joined": True})
        waited = waiting.result(timeout=20)

    assert waited.status is Status.SUCCEEDED and waited.result == {"d": {"joined": True}}
    assert waited.model_dump() == broker.get_run(run_id).model_dump()
    assert broker.wait_for_run(run_id, 0).model_dump() == waited.model_dump()


class _CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0

    def atomic(self, body: Any, *, write: bool = True) -> Any:
        self.transactions += 1
        return super().atomic(body, write=write)


def test_waiting_on_a_run_finished_here_reads_nothing_until_it_is_pruned() -> None:
    storage = _CountingStorage()
    broker = StorageBroker(storage)
    try:
        single = schema("finished-single", steps=["only"])
        worker = HandWorker(broker, [single])
        run_id = broker.dispatch_workflow(single)
        assignment = worker.claim()
        assert assignment is not None
        worker.succeed(assignment, "done")

        before = storage.transactions
        assert broker.wait_for_run(run_id, 5).result == {"only": "done"}
        assert storage.transactions == before

        assert broker.prune_runs(older_than=-1) == 1
        with pytest.raises(RunNotFoundError):
            broker.wait_for_run(run_id, 0)
    finally:
        broker.close()


def test_a_wait_whose_time_is_up_reads_the_run_once() -> None:
    storage = _CountingStorage()
    broker = StorageBroker(storage, sweep_interval=0)
    # Another broker process: it did not dispatch the run, so it must read it.
    other = StorageBroker(storage, sweep_interval=0)
    try:
        single = schema("finished-once", steps=["only"])
        HandWorker(broker, [single])
        run_id = broker.dispatch_workflow(single)
        before = storage.transactions
        with pytest.raises(WaitTimeoutError, match="still PENDING"):
            other.wait_for_run(run_id, 0)
        assert storage.transactions == before + 1
    finally:
        broker.close()


def test_a_rolled_back_finish_hands_nothing_over() -> None:
    storage = MemoryStorage()
    calls: list[str] = []

    def body(t: StorageTransaction) -> None:
        t.after_commit(lambda: calls.append("committed"))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        storage.atomic(body)
    storage.atomic(lambda t: t.after_commit(lambda: calls.append("second")))
    assert calls == ["second"]
