"""How a PostgreSQL transaction talks to the server.

``BEGIN`` goes out with the transaction's first statement and ``COMMIT``
with its last held writes, so a transaction that reads and then writes is
two round trips. These cases count what psycopg is asked to send.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fuseline.storage import PostgresStorage, StorageTransaction, StoredWorker


class _RoundTrips:
    """What psycopg sends: each entry one round trip, a statement alone or a pipeline."""

    def __init__(self) -> None:
        self.trips: list[list[str]] = []
        self._batch: list[str] | None = None

    def heads(self) -> list[list[str]]:
        """Each round trip's statements, by their first word."""
        return [[text.split()[0] for text in trip] for trip in self.trips]

    @contextlib.contextmanager
    def watching(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        execute, pipeline = psycopg.Connection.execute, psycopg.Connection.pipeline

        def counted_execute(connection: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = " ".join(str(query).split())
            if self._batch is None:
                self.trips.append([text])
            else:
                self._batch.append(text)
            return execute(connection, query, *args, **kwargs)

        @contextlib.contextmanager
        def counted_pipeline(connection: Any) -> Iterator[Any]:
            self._batch = []
            try:
                with pipeline(connection) as handle:
                    yield handle
            finally:
                self.trips.append(self._batch)
                self._batch = None

        monkeypatch.setattr(psycopg.Connection, "execute", counted_execute)
        monkeypatch.setattr(psycopg.Connection, "pipeline", counted_pipeline)
        yield


@pytest.fixture
def storage(postgres_url: str) -> Iterator[PostgresStorage]:
    opened = PostgresStorage(postgres_url, max_connections=1)
    # The listener's own LISTEN statements are not part of what is counted.
    assert opened.listening.wait(10)
    try:
        yield opened
    finally:
        opened.close()


def _worker(worker_id: str) -> StoredWorker:
    return StoredWorker(worker_id, None, [], registered_at=1.0, last_seen_at=1.0)


def _seen_at(storage: PostgresStorage, worker_id: str) -> float | None:
    found = storage.atomic(lambda t: t.get_worker(worker_id), write=False)
    return None if found is None else found.last_seen_at


def test_begin_rides_with_the_first_statement_and_commit_with_the_last_writes(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> None:
        assert t.get_worker("w-1") is None
        t.add_worker(_worker("w-1"))  # held: nothing reads what it returns
        t.touch_worker("w-1", 5.0)

    with sent.watching(monkeypatch):
        storage.atomic(body)
    assert sent.heads() == [["BEGIN", "SELECT"], ["INSERT", "UPDATE", "COMMIT"]]
    assert _seen_at(storage, "w-1") == 5.0


def test_a_transaction_that_asks_nothing_sends_nothing(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _RoundTrips()
    with sent.watching(monkeypatch):
        assert storage.atomic(lambda t: 42) == 42
    assert sent.trips == []


def test_a_failed_transaction_is_rolled_back_before_its_connection_is_reused(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> None:
        t.add_worker(_worker("w-2"))
        assert t.get_worker("w-2") is not None  # the insert went out with this read
        t.touch_worker("w-2", 5.0)
        raise RuntimeError("the caller's own failure")

    caplog.set_level(logging.WARNING, logger="psycopg")
    with sent.watching(monkeypatch), pytest.raises(RuntimeError):
        storage.atomic(body)
    # The held write never left; the transaction ended with ROLLBACK, not
    # at the pool, which warns when a connection comes back mid-transaction.
    assert sent.heads() == [["BEGIN", "INSERT", "SELECT"], ["ROLLBACK"]]
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]
    # The one connection is usable, and the insert was undone.
    assert _seen_at(storage, "w-2") is None


def test_a_read_only_transaction_sends_its_reads_alone(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.atomic(lambda t: t.add_worker(_worker("w-3")))
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> tuple[Any, Any]:
        return t.get_worker("w-3"), t.list_workers()

    with sent.watching(monkeypatch):
        found, listed = storage.atomic(body, write=False)
    # No BEGIN and no COMMIT: at READ COMMITTED each read sees the same alone.
    assert sent.heads() == [["SELECT"], ["SELECT"]]
    assert found is not None and [w.worker_id for w in listed] == ["w-3"]


def test_a_read_only_transaction_refuses_writes_and_locks(storage: PostgresStorage) -> None:
    with pytest.raises(RuntimeError, match="cannot write"):
        storage.atomic(lambda t: t.add_worker(_worker("w-4")), write=False)
    with pytest.raises(RuntimeError, match="without locks"):
        storage.atomic(lambda t: t.get_run("r-1", lock=True), write=False)
    assert _seen_at(storage, "w-4") is None
