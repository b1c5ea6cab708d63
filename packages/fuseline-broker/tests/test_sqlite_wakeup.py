"""SQLite brokers sharing one file hear of each other's commits at once, and idle cheaply.

A second broker object on the same file stands for another broker process: it
has connections of its own, and its commits fire none of the first broker's
in-process signals. The waiting broker's storage gets a ``poll_interval``
longer than any wait here, so that only its watch of the file can bring
another broker's change before the wait ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any, TypeVar

import pytest
from broker_contract_support import HandWorker, schema, wait_until

from fuseline.broker import SQLiteBroker, StorageBroker
from fuseline.status import Status
from fuseline.storage import SQLiteStorage, StorageTransaction
from fuseline.storage._sqlite import next_watch_interval

T = TypeVar("T")

LONG_POLL = 20.0  # a wait that a working wake-up ends long before
NEVER = 60.0  # a poll interval that no wait in these tests reaches


class CountingStorage(SQLiteStorage):
    """A SQLite storage that counts its transactions, reads and writes apart."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.counts = {"reads": 0, "writes": 0}
        self._count_lock = threading.Lock()

    def atomic(self, body: Callable[[StorageTransaction], T], *, write: bool = True) -> T:
        result = super().atomic(body, write=write)
        with self._count_lock:
            self.counts["writes" if write else "reads"] += 1
        return result


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """What ``call`` returned and how many seconds it took."""
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[StorageBroker, CountingStorage, SQLiteBroker]]:
    """A waiting broker (with its storage) and another broker on the same file."""
    path = tmp_path / "shared.sqlite3"
    storage = CountingStorage(path, durable=False, poll_interval=NEVER)
    waiting = StorageBroker(storage, sweep_interval=0)
    other = SQLiteBroker(path, durable=False, sweep_interval=0)
    try:
        yield waiting, storage, other
    finally:
        waiting.close()
        other.close()


def test_a_step_queued_by_another_process_ends_a_long_poll_early(
    shared: tuple[StorageBroker, CountingStorage, SQLiteBroker],
) -> None:
    waiting, storage, other = shared
    workflow = schema("wake", steps=["a"])
    worker = HandWorker(waiting, [workflow])
    writes = storage.counts["writes"]
    with ThreadPoolExecutor(1) as pool:
        claim = pool.submit(timed, lambda: worker.claim(wait=LONG_POLL))
        # Each claim is a write transaction: the first look found nothing.
        wait_until(lambda: storage.counts["writes"] > writes, "the claim's first look")
        run_id = other.dispatch_workflow(workflow)
        assignment, seconds = claim.result(timeout=LONG_POLL + 30)
    assert assignment is not None
    assert assignment.instance_id == run_id
    assert seconds < LONG_POLL, "the step came only when the long poll ended"


def test_a_run_finished_by_another_process_ends_wait_for_run_early(
    shared: tuple[StorageBroker, CountingStorage, SQLiteBroker],
) -> None:
    waiting, storage, other = shared
    workflow = schema("finish", steps=["a"])
    run_id = waiting.dispatch_workflow(workflow)
    reads = storage.counts["reads"]
    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(timed, lambda: waiting.wait_for_run(run_id, timeout=LONG_POLL))
        # wait_for_run starts by reading the run: it was not finished then.
        wait_until(lambda: storage.counts["reads"] > reads, "the waiter's first look")
        elsewhere = HandWorker(other, [workflow])
        assignment = elsewhere.claim()
        assert assignment is not None
        elsewhere.succeed(assignment, {"done": True})
        details, seconds = waited.result(timeout=LONG_POLL + 30)
    assert details.status is Status.SUCCEEDED
    assert details.result == {"a": {"done": True}}
    assert seconds < LONG_POLL, "the run's end was noticed only when the wait ended"


def test_an_idle_long_poll_looks_at_the_tables_rarely(tmp_path: Path) -> None:
    path = tmp_path / "idle.sqlite3"
    storage = CountingStorage(path, durable=False)  # the default poll interval
    waiting = StorageBroker(storage, sweep_interval=0)
    other = SQLiteBroker(path, durable=False, sweep_interval=0)
    try:
        worker = HandWorker(waiting, [schema("idle", steps=["a"])])
        writes = storage.counts["writes"]
        with ThreadPoolExecutor(1) as pool:
            claim = pool.submit(worker.claim, 2.0)
            # Meanwhile another process commits, but queues nothing this worker runs.
            registered = 0
            while not claim.done():
                other.register_worker([schema("elsewhere", steps=["b"])])
                registered += 1
                wait_for_futures([claim], timeout=0.05)
            assert claim.result() is None
        assert registered >= 2
        # Looking every 50 ms, as SQLite waiters used to, made 40 claims here.
        assert storage.counts["writes"] - writes <= 8
    finally:
        waiting.close()
        other.close()


def test_the_file_watch_slows_down_while_nothing_comes_and_hurries_when_work_does() -> None:
    schedule = [0.05]
    while len(schedule) < 12:
        schedule.append(next_watch_interval(schedule[-1], activity=False))
    assert schedule == sorted(schedule)
    assert schedule[-1] == 0.25  # at most 4 looks a second when idle, not 20
    assert sum(schedule[:5]) < 1.0  # the slowest pace is reached within a second
    assert next_watch_interval(0.25, activity=True) == 0.05


def test_closing_the_storage_stops_its_watch(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "close.sqlite3", durable=False)
    try:
        before = set(threading.enumerate())
        storage.work.wait(storage.work.generation, 0.0)  # a waiter starts the watch
        started = set(threading.enumerate()) - before
        assert started, "waiting started no thread to watch the file"
    finally:
        storage.close()
    assert not any(thread.is_alive() for thread in started)
