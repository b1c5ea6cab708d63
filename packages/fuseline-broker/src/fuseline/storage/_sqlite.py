"""SQLite storage: the embedded default.

A SQLite file in WAL mode serves several broker processes on one machine:
each write transaction starts with ``BEGIN IMMEDIATE``, which takes the
database's single write lock, so reports, claims and expiries happen one
after the other and no row lock is needed. Readers never wait for writers.

SQLite has no notifications between processes. Once anyone waited for work
or for a run, a thread of the storage watches the file instead: it reads
``PRAGMA data_version``, a number that changes only when another connection
committed, every 50 ms while work comes (every 250 ms after a quiet spell
of about a second), and only after a change looks (two index
look-ups) whether a step was queued or a run finished since, to fire
``work`` or ``runs``. So a commit by another process wakes waiters within
about 50 ms while the broker is busy and 250 ms when it was idle, while commits
that queue or finish nothing (an idle claim noting that its worker was
seen) wake no one. This process's own commits are seen too; the second
wake-up they give is one more look for waiters that were woken already.
Waiters still look at the tables every ``poll_interval`` as a safety net.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fuseline.errors import BrokerUnavailableError
from fuseline.storage._base import RuntimeStorage, Signal, StorageTransaction
from fuseline.storage._sql import SQLITE, SqlTransaction, migrations

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

log = logging.getLogger("fuseline.storage")

_BUSY_TIMEOUT_MS = 30_000
# The watch looks every 50 ms while work comes, and less often the longer
# none comes, down to every 250 ms: on this path an idle
# broker's wake-ups are most of what it costs, and the first change after a
# quiet spell is rarely in a hurry.
_WATCH_INTERVAL = 0.05
_WATCH_INTERVAL_QUIET = 0.25
_WATCH_BACKOFF = 1.5
# The newest queued step and the newest finished run; both columns are the
# first of a partial index, so this reads two index entries. A step is queued
# (again) with ``ready_at`` set to the time, so a newer queued step means work.
_NEWEST = (
    "SELECT (SELECT max(ready_at) FROM fuseline_steps WHERE status = 'PENDING'), "
    "(SELECT max(finished_at) FROM fuseline_runs WHERE finished_at IS NOT NULL)"
)


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


def next_watch_interval(interval: float, *, activity: bool) -> float:
    """How long the file watch sleeps after a look that slept ``interval``.

    Back to the shortest after work or a run's end was seen; longer and
    longer, up to the longest, while nothing comes.
    """
    if activity:
        return _WATCH_INTERVAL
    return min(interval * _WATCH_BACKOFF, _WATCH_INTERVAL_QUIET)


def _newer(before: Any, now: Any) -> bool:
    return now is not None and (before is None or now > before)


class _FileWatch:
    """The thread that fires a storage's signals for other processes' commits.

    Its connection is used by its own thread only. It starts with the first
    wait, so a storage that no one waits on runs no thread.
    """

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], work: Signal, runs: Signal
    ) -> None:
        self._connect = connect
        self._work = work
        self._runs = runs
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching, unless watching already or stopped."""
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=self._watch, name="fuseline-sqlite-watch", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait until it closed its connection."""
        with self._lock:
            self._stopped.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _watch(self) -> None:
        work, runs = self._work, self._runs
        try:
            connection = self._connect()
        except sqlite3.Error as exc:
            log.warning("Cannot watch the SQLite file for other processes' changes: %s", exc)
            return
        try:
            seen = connection.execute("PRAGMA data_version").fetchone()[0]
            queued, finished = connection.execute(_NEWEST).fetchone()
            # A waiter may have looked at the tables before this first look.
            work.fire()
            runs.fire()
            interval = _WATCH_INTERVAL
            while not self._stopped.wait(interval):
                try:
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                    if version == seen:
                        interval = next_watch_interval(interval, activity=False)
                        continue
                    new_queued, new_finished = connection.execute(_NEWEST).fetchone()
                except sqlite3.Error as exc:  # pragma: no cover - busy during recovery
                    log.debug("watching the SQLite file failed: %s", exc)
                    continue
                seen = version
                more_work = _newer(queued, new_queued)
                run_ended = _newer(finished, new_finished)
                if more_work:
                    work.fire()
                if run_ended:
                    runs.fire()
                queued, finished = new_queued, new_finished
                # Only work and ends of runs make the watch keen again, not
                # commits such as an idle claim noting that its worker was seen.
                interval = next_watch_interval(interval, activity=more_work or run_ended)
        except sqlite3.Error as exc:  # pragma: no cover - the file became unreadable
            log.warning("Stopped watching the SQLite file for other processes' changes: %s", exc)
        finally:
            connection.close()


class _WatchedSignal(Signal):
    """A signal whose waiters first make sure that the file is watched."""

    def __init__(self, start_watch: Callable[[], None]) -> None:
        super().__init__()
        self._start_watch = start_watch

    def wait(self, since: int, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """As :meth:`Signal.wait`, once the file is watched."""
        self._start_watch()
        return super().wait(since, timeout, until)


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
            transaction.before_commit()
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._committed(transaction)
        return result


class SQLiteStorage(_SQLiteBase):
    """State in a SQLite file, shared safely by the broker processes of one machine.

    Args:
        path: The database file; created (with its tables) when missing.
        durable: Sync the write-ahead log to disk at every commit, so that an
            acknowledged change survives a power cut, not only a crash.
        poll_interval: How often a waiter looks at the tables although it
            heard of no change. Work queued by another process on the same
            file is noticed within 50 to 250 ms anyway, by watching the file.
    """

    def __init__(
        self, path: str | Path, *, durable: bool = True, poll_interval: float = 5.0
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
        self.work = _WatchedSignal(self._start_watch)
        self.runs = _WatchedSignal(self._start_watch)
        self._watch = _FileWatch(self._open, self.work, self.runs)
        try:
            _migrate(self._connection())
        except sqlite3.Error as exc:
            self.close()
            raise BrokerUnavailableError(f"Cannot open {self.description}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._synchronous}")
        connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return connection

    def _start_watch(self) -> None:
        self._watch.start()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self._closed:
            raise BrokerUnavailableError("The storage is closed.")
        connection = self._open()
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
        """Stop watching the file and close every connection this storage opened."""
        self._closed = True
        self._watch.stop()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
