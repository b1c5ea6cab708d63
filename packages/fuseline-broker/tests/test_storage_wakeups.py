"""Which commits wake waiting claims, on every storage backend.

A commit wakes the claims waiting for work only when it leaves a step ready
that no one has claimed: a report that queues its successor and claims it in
the same transaction, as a chain's steps usually go, wakes no one. On
PostgreSQL, a broker process also ignores its own notifications, since it
woke its own waiters right after the commit; other processes still hear them.
"""

from __future__ import annotations

import psycopg
from broker_contract_support import Backend, HandWorker, schema, wait_until

from fuseline.broker import StorageBroker
from fuseline.messages import StepAssignment
from fuseline.status import Status
from fuseline.storage import PostgresStorage, RuntimeStorage

S = Status


class WakeUps:
    """Counts the wake-ups of a storage's work signal, other than its own markers.

    On PostgreSQL a notification reaches the storage a moment after the
    commit. They arrive in order, so once a marker sent last has woken the
    storage, every earlier one has been handled; the markers' own wake-ups
    are not counted.
    """

    def __init__(self, backend: Backend, storage: RuntimeStorage) -> None:
        self.url = backend.postgres_url
        self.storage = storage
        self.markers = 0
        if isinstance(storage, PostgresStorage):
            assert storage.listening.wait(10), "the storage's listener never connected"

    def settled(self) -> int:
        """Wake-ups so far, once every notification sent so far was handled."""
        if self.url is not None:
            before = self.storage.work.generation
            with psycopg.connect(self.url, autocommit=True) as connection:
                connection.execute("NOTIFY fuseline_work, 'test-marker'")
            wait_until(lambda: self.storage.work.generation > before, "the marker notification")
            self.markers += 1
        return self.storage.work.generation - self.markers


def first_step_claimed(
    backend: Backend, broker: StorageBroker, name: str, edges: list[tuple[str, str]]
) -> tuple[HandWorker, StepAssignment, WakeUps, int]:
    """Dispatch a chain, claim its first step, then start counting wake-ups."""
    chain = schema(name, edges)
    worker = HandWorker(broker, [chain])
    broker.dispatch_workflow(chain)
    first = worker.claim()
    assert first is not None
    wakeups = WakeUps(backend, broker.storage)
    return worker, first, wakeups, wakeups.settled()


def test_a_report_that_claims_the_step_it_queued_wakes_no_one(
    backend: Backend, broker: StorageBroker
) -> None:
    worker, a, wakeups, before = first_step_claimed(
        backend, broker, "wake-chain", [("a", "b"), ("b", "c")]
    )

    b = worker.report(a, S.SUCCEEDED, 1, claim_next=True)

    assert b is not None and b.step_name == "b"
    assert wakeups.settled() == before


def test_a_report_that_leaves_its_successor_ready_wakes_waiting_claims_once(
    backend: Backend, broker: StorageBroker
) -> None:
    worker, a, wakeups, before = first_step_claimed(backend, broker, "wake-left", [("a", "b")])

    worker.succeed(a, 1)

    # Once, right after the commit: its own notification does not wake it again.
    assert wakeups.settled() == before + 1
    assert worker.claim() is not None


def test_a_claim_of_other_work_still_wakes_for_the_step_left_ready(
    backend: Backend, broker: StorageBroker
) -> None:
    single = schema("wake-other", steps=["only"])
    chain = schema("wake-other-chain", [("a", "b")])
    worker = HandWorker(broker, [single, chain])
    broker.dispatch_workflow(chain)
    a = worker.claim()
    assert a is not None
    waiting = broker.dispatch_workflow(single)  # older than the b about to be queued
    wakeups = WakeUps(backend, broker.storage)
    before = wakeups.settled()

    claimed = worker.report(a, S.SUCCEEDED, 1, claim_next=True)

    assert claimed is not None and claimed.instance_id == waiting
    assert wakeups.settled() == before + 1


def test_other_broker_processes_still_hear_of_work(durable_backend: Backend) -> None:
    first, second = durable_backend.open(), durable_backend.open()
    chain = schema("wake-across", [("a", "b")])
    worker = HandWorker(first, [chain])
    HandWorker(second, [chain])
    before = second.storage.work.generation

    first.dispatch_workflow(chain)

    if durable_backend.postgres_url is not None:
        wait_until(lambda: second.storage.work.generation > before, "the other broker to hear")
    assert worker.claim() is not None


def test_a_closed_postgres_storage_stops_listening_at_once(postgres_url: str) -> None:
    # The listener sleeps until the server sends something; close() must wake it.
    storage = PostgresStorage(postgres_url)
    assert storage.listening.wait(10), "the storage's listener never connected"
    listener = storage._listener
    storage.close()
    assert not listener.is_alive()
    storage.close()  # a second close is harmless


def test_a_postgres_listener_whose_connection_is_cut_listens_again(postgres_url: str) -> None:
    storage = PostgresStorage(postgres_url)
    try:
        assert storage.listening.wait(10), "the storage's listener never connected"
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            ).fetchall()
            assert cut == [(True,)]
            wait_until(lambda: not storage.listening.is_set(), "the listener to notice the cut")
            wait_until(storage.listening.is_set, "the listener to connect again")
            before = storage.work.generation
            admin.execute("NOTIFY fuseline_work, 'from-elsewhere'")
        wait_until(lambda: storage.work.generation > before, "the notification to be heard")
    finally:
        storage.close()
