"""Which commits wake waiting claims, on every storage backend.

A commit wakes the claims waiting for work only when it leaves a step ready
that no one has claimed: a report that queues its successor and claims it in
the same transaction, as a chain's steps usually go, wakes no one. On
PostgreSQL, a broker process also ignores its own notifications, since it
woke its own waiters right after the commit; other processes still hear them.
"""

from __future__ import annotations

from typing import Any

import psycopg
from broker_contract_support import Backend, HandWorker, schema, wait_until

from fuseline.broker import StorageBroker
from fuseline.messages import StepAssignment
from fuseline.status import Status
from fuseline.storage import (
    PostgresStorage,
    RuntimeStorage,
    StorageTransaction,
    StoredRun,
    StoredStep,
)
from fuseline.storage._postgres import _OTHERS, _Presence

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


def _queue_a_step(storage: PostgresStorage, run_id: str) -> None:
    """Commit a run with one ready step that no one claims: work to announce."""

    def body(t: StorageTransaction) -> None:
        assert t.add_run(StoredRun(run_id, "wf", "1", {}, S.PENDING))
        t.add_steps([StoredStep(run_id, "a", "wf", "1", S.PENDING, ready_at=t.now())])

    storage.atomic(body)


def _heard(listening: psycopg.Connection[Any], url: str) -> list[str]:
    """The payloads ``listening`` received on the work channel before a marker sent now.

    Notifications arrive in the order of their commits, so once the marker is
    in, everything committed before it is too.
    """
    with psycopg.connect(url, autocommit=True) as sender:
        sender.execute("NOTIFY fuseline_work, 'test-marker'")
    payloads = []
    for note in listening.notifies(timeout=15):
        if note.payload == "test-marker":
            return payloads
        payloads.append(note.payload)
    raise AssertionError("the marker notification never arrived")


def _opened(url: str, **options: Any) -> PostgresStorage:
    storage = PostgresStorage(url, **options)
    assert storage.listening.wait(10), "the storage's listener never connected"
    return storage


def _others_held(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND mode = 'ExclusiveLock' AND objid = %s",
            (_OTHERS,),
        ).fetchone()
    return row == (1,)


def test_a_postgres_storage_alone_on_its_database_sends_no_notifications(
    postgres_url: str,
) -> None:
    opened = [_opened(postgres_url)]
    alone = opened[0]
    try:
        with psycopg.connect(postgres_url, autocommit=True) as listening:
            listening.execute("LISTEN fuseline_work")
            before = alone.work.generation

            _queue_a_step(alone, "r-alone")

            # Its own waiters are woken directly; nothing goes to the server.
            assert alone.work.generation == before + 1
            assert _heard(listening, postgres_url) == []

            other = _opened(postgres_url)
            opened.append(other)
            since = other.work.generation

            _queue_a_step(alone, "r-shared")

            assert len(_heard(listening, postgres_url)) == 1
            wait_until(lambda: other.work.generation > since, "the other storage to hear")
    finally:
        for storage in opened:
            storage.close()


def test_a_joining_postgres_storage_waits_for_commits_that_found_no_one_listening(
    postgres_url: str,
) -> None:
    # A transaction of the first process that found no other listening holds
    # the lock shared until it commits; a process that joins cannot listen,
    # and look at the tables, before that commit, so it cannot miss it.
    first = _opened(postgres_url)
    joining: PostgresStorage | None = None
    try:
        with psycopg.connect(postgres_url, autocommit=True) as in_flight:
            in_flight.execute("BEGIN")
            in_flight.execute(_Presence.NOTIFY_IF_OTHERS.replace("?", "%s"), ("c", "p"))
            joining = PostgresStorage(postgres_url)
            assert not joining.listening.wait(0.3)  # it waits in line for the lock
            in_flight.execute("COMMIT")
        assert joining.listening.wait(10), "the joining storage did not go on after the commit"
        assert _others_held(postgres_url)
    finally:
        first.close()
        if joining is not None:
            joining.close()


def test_a_later_postgres_storage_takes_over_keeping_the_first_notifying(
    postgres_url: str,
) -> None:
    first = _opened(postgres_url)
    holder = _opened(postgres_url, poll_interval=0.1)
    spare = _opened(postgres_url, poll_interval=0.1)
    try:
        assert _others_held(postgres_url)
        holder.close()
        wait_until(lambda: _others_held(postgres_url), "the spare to take the lock over")
        since = spare.work.generation
        with psycopg.connect(postgres_url, autocommit=True) as listening:
            listening.execute("LISTEN fuseline_work")

            _queue_a_step(first, "r-after")

            assert len(_heard(listening, postgres_url)) == 1
        wait_until(lambda: spare.work.generation > since, "the spare to hear")
    finally:
        for storage in (first, holder, spare):
            storage.close()
