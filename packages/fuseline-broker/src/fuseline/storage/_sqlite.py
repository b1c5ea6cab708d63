"""SQLite storage: the embedded default.

A SQLite file in WAL mode serves several broker processes on one machine:
each write transaction starts with ``BEGIN IMMEDIATE``, which takes the
database's single write lock, so reports, claims and expiries happen one
after the other and no row lock is needed. Readers never wait for writers.
Other processes' changes are noticed by polling (``poll_interval``), since
SQLite has no notifications between processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fuseline.errors import BrokerUnavailableError
from fuseline.storage._base import RuntimeStorage, StorageTransaction
from fuseline.storage._sql import SQLITE, SqlTransaction, migrations

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 30_000


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS fuseline_schema_version (version INTEGER NOT NULL)"
        )
        row = connection.execute("SELECT max(version) FROM fuseline_schema_version").fetchone()
        current = row[0] or 0
        steps = migrations(SQLITE)
        for version in range(current, len(steps)):
            for statement in steps[version]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO fuseline_schema_version (version) VALUES (?)", (version + 1,)
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


class _SQLiteBase(RuntimeStorage):
    def _run(
        self, connection: sqlite3.Connection, body: Callable[[StorageTransaction], T], write: bool
    ) -> T:
        transaction = SqlTransaction(connection, SQLITE, time.time)
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise BrokerUnavailableError(
                f"The SQLite database is busy or unreadable ({exc}); try again."
            ) from exc
        try:
            result = body(transaction)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        if transaction.work_changed:
            self.work.fire()
        if transaction.runs_changed:
            self.runs.fire()
        return result


class SQLiteStorage(_SQLiteBase):
    """State in a SQLite file, shared safely by the broker processes of one machine.

    Args:
        path: The database file; created (with its tables) when missing.
        durable: Sync the write-ahead log to disk at every commit, so that an
            acknowledged change survives a power cut, not only a crash.
        poll_interval: How often a waiting claim looks for work that another
            process made ready.
    """

    def __init__(
        self, path: str | Path, *, durable: bool = True, poll_interval: float = 0.05
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.description = f"SQLite file {self.path}"
        self.poll_interval = poll_interval
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            _migrate(self._connection())
        except sqlite3.Error as exc:
            self.close()
            raise BrokerUnavailableError(f"Cannot open {self.description}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self._closed:
            raise BrokerUnavailableError("The storage is closed.")
        connection = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._synchronous}")
        connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    def atomic(self, body: Callable[[StorageTransaction], T], *, write: bool = True) -> T:
        """Run ``body`` in one transaction (write transactions hold the database lock)."""
        try:
            return self._run(self._connection(), body, write)
        except sqlite3.OperationalError as exc:
            raise BrokerUnavailableError(
                f"{self.description} could not complete the request ({exc}); try again."
            ) from exc

    def close(self) -> None:
        """Close every connection this storage opened."""
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
