"""PostgreSQL storage: the production backend, for any number of broker processes.

Transactions run at READ COMMITTED. Changes to a run lock its row first
(``SELECT ... FOR UPDATE``), so reports, expiries and cancellation of one run
happen one after the other while other runs proceed in parallel; claims lock
queued step rows with ``FOR UPDATE SKIP LOCKED``, so concurrent claims never
take the same step nor wait for each other. Deadlines use the database
server's clock.

``NOTIFY`` after a commit that left work ready (or finished a run) wakes the
waiting claims of every other broker process at once; it is only a hint, and
waiters look at the tables again every ``poll_interval`` anyway. Work the
committing transaction claimed itself wakes no one, and a process ignores
its own notifications, since it woke its own waiters right after the commit.
A process alone on its database sends none (see :class:`_Presence`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from fuseline.errors import BrokerUnavailableError, MissingDependencyError
from fuseline.status import Status
from fuseline.storage._base import RuntimeStorage, StorageTransaction, StoredRun, StoredStep
from fuseline.storage._sql import (
    POSTGRESQL,
    SqlTransaction,
    key_last,
    migrations,
    row_params,
    run_change,
    runs_update_statement,
    step_change,
    step_values,
    steps_insert_statement,
    steps_update_statement,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised by the packaging checks
    raise MissingDependencyError(
        'PostgreSQL storage needs psycopg: pip install "fuseline-broker[postgres]"'
    ) from exc

__all__ = ["PostgresStorage", "safe_url"]

T = TypeVar("T")

log = logging.getLogger("fuseline.storage")

_WORK_CHANNEL = "fuseline_work"
_RUNS_CHANNEL = "fuseline_runs"
_MIGRATION_LOCK = 7_346_112_901  # any constant: serialises migrations across processes
# Advisory locks of the two-key form, in a key space of their own (see _Presence).
_LOCK_SPACE = 1_179_864_142
_FIRST = 1
_OTHERS = 2
_RETRIES = 5
_IN_TRANSACTION = (
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)


def safe_url(url: str) -> str:
    """``url`` without its password or query string, fit for logs."""
    try:
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{user}{parts.hostname or 'localhost'}{port}{parts.path}"
    except ValueError:
        return "postgresql://(an unparsable URL)"


# A statement held back, its values, and the cursor whose result the caller
# reads later (None for a write whose result nothing reads).
_Held = tuple[str, tuple[Any, ...], "psycopg.Cursor[Any] | None"]
_BEGIN: _Held = ("BEGIN", (), None)
_COMMIT: _Held = ("COMMIT", (), None)


class _Presence:
    """Whether a process needs to notify: are other broker processes listening?

    A ``NOTIFY`` makes every committing transaction that sends one wait its
    turn for a lock that all of them share, and it wakes every listening
    connection, this process's own among them, which then drops it. A
    process alone on its database (one server process, the default) needs
    none of that: it wakes its own waiters directly.

    The first process to listen takes the advisory lock ``_FIRST`` for as
    long as its listening connection lasts. Its transactions notify only if
    ``pg_try_advisory_xact_lock_shared`` cannot take ``_OTHERS`` (the test
    is in the statement that would notify, and when it succeeds the shared
    lock stays until the commit). Every later process holds ``_OTHERS``
    exclusively, or finds it held so by another later process, and always
    notifies. So the first process notifies exactly when another one
    listens, and the others notify as they always did.

    A later process that joins must not miss what a transaction of the
    first one, having found ``_OTHERS`` free, commits afterwards. Such a
    transaction holds ``_OTHERS`` shared until its commit, so the newcomer
    cannot take it before that commit; it takes the lock, waiting in line
    behind such transactions (tests made while it waits fail, as they would
    if it held the lock), or sees that another holds it exclusively, which
    no such transaction can outlast either; only then does it listen and
    look at the tables. A later process that does not hold the lock tries
    again every poll interval, in case its holder went away, and looks at
    the tables when it gets it.
    """

    NOTIFY_IF_OTHERS = (
        "SELECT pg_notify(?, ?) "
        f"WHERE NOT pg_try_advisory_xact_lock_shared({_LOCK_SPACE}, {_OTHERS})"
    )
    FIRST = f"SELECT pg_try_advisory_lock({_LOCK_SPACE}, {_FIRST})"
    # Whether another connection holds _OTHERS exclusively (built from the
    # constants above only).
    HELD = (
        "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "  # noqa: S608
        "AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database "
        f"WHERE datname = current_database()) AND classid = {_LOCK_SPACE} "
        f"AND objid = {_OTHERS} AND objsubid = 2 AND pid <> pg_backend_pid())"
    )
    # Waits in line, behind the transactions holding it shared: while it
    # waits, the first process's tests fail (a waiting exclusive request
    # blocks new shared ones), so they cannot keep it from being granted.
    TAKE = f"SELECT pg_advisory_lock({_LOCK_SPACE}, {_OTHERS})"
    TAKE_WAIT = "SET lock_timeout = '200ms'"

    @staticmethod
    def first(connection: psycopg.Connection[Any]) -> bool:
        """Try to be the first process; held as long as ``connection`` lasts."""
        row = connection.execute(_Presence.FIRST).fetchone()
        return bool(row and row[0])

    @staticmethod
    def join(connection: psycopg.Connection[Any], stopped: threading.Event) -> bool | None:
        """Make the first process notify: hold ``_OTHERS``, or see that another process does.

        Returns True when ``connection`` took the lock, False when another
        later process holds it, None when stopped before either.
        """
        connection.execute(_Presence.TAKE_WAIT)
        while not stopped.is_set():
            row = connection.execute(_Presence.HELD).fetchone()
            if row and row[0]:
                return False
            try:
                connection.execute(_Presence.TAKE)
            except pg_errors.LockNotAvailable:
                continue  # held by a process that just joined, or busy: look again
            return True
        return None


def _configure(connection: psycopg.Connection[Any]) -> None:
    """Session settings of every pooled connection.

    Bitmap scans are off. A claim wants the oldest few queued steps, which
    the queue's index gives in order; but when the statistics say that few
    steps are queued (taken before a burst of dispatches, as they usually
    are), the planner prefers to collect every queued step and sort them,
    so each claim costs in proportion to the queue's length. None of the
    broker's statements needs a bitmap scan: they all look up a few rows
    by an index.
    """
    connection.execute("SET enable_bitmapscan = off")


class _PgTransaction(SqlTransaction):
    """Holds writes back and sends them in one round trip; NOTIFY is delivered on commit.

    A statement whose result nothing reads (an update, an insert, a NOTIFY)
    waits until the transaction next reads or commits. The writes held by
    then go to the server together, in order, in pipeline mode, followed in
    the same round trip by the read that needs them, or by ``COMMIT``. A
    report writes three rows per step, so a batch of reports saves most of
    its round trips this way.

    The connection is in autocommit mode and the transaction sends its own
    ``BEGIN`` and ``COMMIT``: ``BEGIN`` is held like a write, so it travels
    with the first statement, and ``COMMIT`` travels with the last writes.
    psycopg's ``transaction()`` would send each alone, two round trips more.
    A transaction that is a single statement (a claim, a dispatch) sends
    neither: on its own that statement is a transaction already.

    A read-only transaction sends neither: at READ COMMITTED each statement
    sees what was committed before it started, inside a transaction or not,
    so its reads see the same either way. It refuses writes and row locks,
    which would not outlive their statement there.
    """

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        clock: Callable[[], float],
        sender: str,
        *,
        first: bool = False,
        read_only: bool = False,
    ) -> None:
        super().__init__(connection, POSTGRESQL, clock)
        self._pg = connection
        self._read_only = read_only
        self._held: list[_Held] = [] if read_only else [_BEGIN]
        # Whether BEGIN went out: a transaction that sent nothing has nothing to end.
        self._open = False
        # Held writes all go through one cursor: nothing reads their results,
        # and a new cursor per statement costs a third of psycopg's work.
        self._writer: psycopg.Cursor[Any] | None = None
        # Whether COMMIT went out with the last write, and whether the wake-ups
        # were settled before it (see _execute_last).
        self._ended = False
        self._settled = False
        # Sent as the NOTIFY payload, so that this process's listener can skip
        # its own notifications: this process already woke its waiters.
        self._sender = sender
        # Whether this is the first process, which notifies only when others
        # listen (see _Presence).
        self._first = first
        # Step rows inserted and step and run rows written since the held
        # writes last went out, by key, the last write of a row winning:
        # they go out as one statement per kind (see _queue_rows).
        self._new_steps: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._changed_steps: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._changed_runs: dict[str, tuple[Any, ...]] = {}

    @property
    def ended_early(self) -> bool:
        """Whether COMMIT went out with the last write (see :meth:`_execute_last`)."""
        return self._ended

    def _check_write(self, statement: str) -> None:
        if self._read_only:
            raise RuntimeError(f"a read-only transaction cannot write: {statement[:60]}")
        if self._ended and not (
            statement.startswith("NOTIFY") or statement is _Presence.NOTIFY_IF_OTHERS
        ):
            raise RuntimeError(
                f"the transaction was committed with its last write: {statement[:60]}"
            )

    def _write(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._check_write(statement)
        self._queue_rows()
        self._held.append((self._dialect.sql(statement), tuple(params), None))

    def _write_read_later(
        self, statement: str, params: Sequence[Any]
    ) -> Callable[[], psycopg.Cursor[Any]]:
        """Hold a write like the others, on a cursor of its own to read its result from."""
        self._check_write(statement)
        self._queue_rows()
        held: _Held = (self._dialect.sql(statement), tuple(params), self._pg.cursor())
        self._held.append(held)

        def result() -> psycopg.Cursor[Any]:
            if any(entry is held for entry in self._held):
                self.flush()
            return cast("psycopg.Cursor[Any]", held[2])

        return result

    # -- rows written together ------------------------------------------------------
    def add_steps(self, steps: Sequence[StoredStep]) -> None:
        """Hold the new rows; they go out with the other rows held (see :meth:`_queue_rows`)."""
        self._check_write("INSERT INTO fuseline_steps")
        for step in steps:
            key = (step.run_id, step.step_name)
            if key in self._new_steps or key in self._changed_steps:
                # The row exists: let the primary key refuse the second one.
                self._queue_rows()
            self._new_steps[key] = step_values(step)
            if step.status is Status.PENDING:
                self._made_ready(step)

    def update_step(self, step: StoredStep) -> None:
        """Hold the row's new values; a row inserted since the last send is inserted with them."""
        self._check_write("UPDATE fuseline_steps")
        key = (step.run_id, step.step_name)
        if key in self._new_steps:
            self._new_steps[key] = step_values(step)
        else:
            self._changed_steps[key] = step_change(step)
        if step.status is Status.PENDING:
            self._made_ready(step)

    def update_run(self, run: StoredRun) -> None:
        """Hold the run's new values."""
        self._check_write("UPDATE fuseline_runs")
        self._changed_runs[run.run_id] = run_change(run)

    def _queue_rows(self) -> None:
        """Turn the rows held by key into statements held in order: one per kind.

        A batch of reports writes three rows per report (its step, a
        successor, its run); they go out as three statements instead of
        three per report. Inserts go first, then step updates, then run
        updates: the rows are distinct (a row written twice keeps its last
        values, an inserted row its updated ones), no constraint ties one
        table to the other, and every other write sends the rows held before
        it goes, so nothing is reordered across it.
        """
        if self._new_steps:
            rows = list(self._new_steps.values())
            self._new_steps = {}
            statement = self._dialect.sql(steps_insert_statement(len(rows)))
            self._held.append((statement, rows[0] if len(rows) == 1 else row_params(rows), None))
        for changed, key_size, build in (
            (self._changed_steps, 2, steps_update_statement),
            (self._changed_runs, 1, runs_update_statement),
        ):
            if not changed:
                continue
            rows = list(changed.values())
            changed.clear()
            params = key_last(rows[0], key_size) if len(rows) == 1 else row_params(rows)
            self._held.append((self._dialect.sql(build(len(rows))), params, None))

    def _check_read(self, statement: str) -> None:
        if self._read_only and (
            not statement.startswith("SELECT") or self._dialect.lock in statement
        ):
            raise RuntimeError(
                f"a read-only transaction can only read, without locks: {statement[:60]}"
            )

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        self._check_read(statement)
        self._queue_rows()
        if not self._held:
            return super()._execute(statement, params)
        # The writes held so far go ahead of this statement, in the same round trip.
        with self._pg.pipeline():
            self._send_held()
            return super()._execute(statement, params)

    def _send_held(self) -> None:
        """Send the writes held so far (in a pipeline, unless there is one)."""
        self._queue_rows()
        held, self._held = self._held, []
        if not held:
            return
        self._open = True
        if self._writer is None:
            self._writer = self._pg.cursor()
        for statement, params, own in held:
            (own or self._writer).execute(statement, params)

    def _read_all(self, reads: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[Any]]:
        """The reads in one round trip, behind the writes held so far.

        The server runs them one after the other, each with a snapshot taken
        when it starts, so a read that follows a lock sees what the lock
        waited for.
        """
        for statement, _ in reads:
            self._check_read(statement)
        cursors = []
        with self._pg.pipeline():
            self._send_held()
            for statement, params in reads:
                cursors.append(super()._execute(statement, params))
        return [cursor.fetchall() for cursor in cursors]

    def _execute_last(
        self, statement: str, params: Sequence[Any] = (), *, settled: bool = False
    ) -> Any:
        """The held writes, this statement and ``COMMIT``, in one round trip.

        What the transaction reads afterwards, it reads outside it. A
        ``NOTIFY`` goes before the ``COMMIT`` when ``settled`` (the caller
        knows what the transaction wakes), and otherwise, when one is decided
        afterwards, out alone once the body is done.
        """
        self._check_read(statement)
        self._queue_rows()
        if not self._open and self._held == [_BEGIN]:
            return self._execute_alone(statement, params, settled=settled)
        with self._pg.pipeline():
            self._send_held()
            cursor = super()._execute(statement, params)
            if settled:
                self._settle_before_commit()
            self._held.append(_COMMIT)
            self._send_held()
        self._ended = True
        return cursor

    def _execute_alone(self, statement: str, params: Sequence[Any], *, settled: bool) -> Any:
        """A transaction that is this one statement: sent without ``BEGIN`` and ``COMMIT``.

        The connection is in autocommit mode, so a statement sent alone is a
        transaction of its own, all or nothing. A ``NOTIFY`` settled now
        follows it in the same round trip (as a transaction of its own too,
        so that it is heard only once the statement's changes are visible).
        """
        self._held = []
        if settled:
            self._settle_before_commit()
        notify, self._held = self._held, []
        if not notify:
            cursor = super()._execute(statement, params)
        else:
            with self._pg.pipeline():
                cursor = super()._execute(statement, params)
                self._held = notify
                self._send_held()
        self._ended = True
        return cursor

    def _settle_before_commit(self) -> None:
        """Decide the wake-ups now, so that their NOTIFY goes with the statement ending it all."""
        self.before_commit()
        self._settled = True

    def give_back(self, steps: Sequence[StoredStep]) -> int:
        """Requeue claimed steps whose claim never reached its worker; returns how many.

        Each goes back to how it was before the claim, its attempt uncounted
        and its place in the queue kept, unless it no longer holds the lease
        the claim gave it (it expired and went elsewhere meanwhile). One
        statement for them all.
        """
        given: int = self._execute(
            "UPDATE fuseline_steps AS s SET status = 'PENDING', attempt = s.attempt - 1, "
            "worker_id = NULL, lease_token = NULL, deadline = NULL, "
            "started_at = CASE WHEN s.attempt = 1 THEN NULL ELSE s.started_at END "
            "FROM unnest(?::text[], ?::text[], ?::text[]) AS v(run_id, step_name, lease_token) "
            "WHERE s.run_id = v.run_id AND s.step_name = v.step_name "
            "AND s.status = 'RUNNING' AND s.lease_token = v.lease_token",
            (
                [step.run_id for step in steps],
                [step.step_name for step in steps],
                [step.lease_token for step in steps],
            ),
        ).rowcount
        if given:
            self.notify_work()
        return given

    def flush(self) -> None:
        self._queue_rows()
        if len(self._held) < 2:
            self._send_held()
            return
        with self._pg.pipeline():
            self._send_held()

    def commit(self) -> None:
        """Send the writes still held and ``COMMIT``, in one round trip."""
        if self._read_only:
            return  # every statement was a transaction of its own
        if self._ended:
            self.flush()  # a NOTIFY decided after the commit, if any
            return
        self._queue_rows()
        if not self._open and len(self._held) == 1:
            self._held = []  # only the BEGIN: nothing was asked of the server
            return
        self._held.append(_COMMIT)
        self.flush()

    def rollback(self) -> None:
        """End a transaction that failed; a broken connection is left to the pool."""
        self._held = []
        self._new_steps, self._changed_steps, self._changed_runs = {}, {}, {}
        if self._pg.info.transaction_status in _IN_TRANSACTION:
            with contextlib.suppress(psycopg.Error):
                self._pg.execute("ROLLBACK")

    def before_commit(self) -> None:
        if self._settled:
            return  # settled and announced with the commit (see _execute_last)
        super().before_commit()
        # NOTIFY is delivered at commit wherever it stands in the transaction,
        # so the one for work is decided last, once this transaction's claims
        # are known.
        if self.work_changed:
            self._notify(_WORK_CHANNEL)

    def notify_runs(self) -> None:
        if not self.runs_changed:
            self._notify(_RUNS_CHANNEL)
        super().notify_runs()

    def _notify(self, channel: str) -> None:
        if self._first:
            self._write(_Presence.NOTIFY_IF_OTHERS, (channel, self._sender))
        else:
            self._write(f"NOTIFY {channel}, '{self._sender}'")


class PostgresStorage(RuntimeStorage):
    """State in PostgreSQL, through a pool of connections.

    Args:
        url: A ``postgresql://`` connection URL.
        min_connections: Connections kept open.
        max_connections: Most connections this process opens.
        connect_timeout: Seconds to wait for the database when the storage opens.
        request_timeout: Seconds a call waits for a pooled connection before
            answering that the database is unavailable; kept well under the
            clients' own timeouts, so that they get that answer during an outage.
        poll_interval: How often waiters look at the tables when no
            notification came.
    """

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 16,
        connect_timeout: float = 10.0,
        request_timeout: float = 3.0,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self._url = url
        self.description = f"PostgreSQL at {safe_url(url)}"
        self.poll_interval = poll_interval
        self._timeout = connect_timeout
        self._stopped = threading.Event()
        self._sender = secrets.token_hex(8)
        # Set while the listener is connected and listening.
        self.listening = threading.Event()
        # Whether the listener holds the first process's lock (see _Presence).
        self._first = False
        self._pool = ConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            timeout=request_timeout,
            # Transactions send their own BEGIN and COMMIT (see _PgTransaction).
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            name="fuseline",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            self._migrate()
        except (psycopg.Error, PoolTimeout) as exc:
            self._pool.close()
            raise BrokerUnavailableError(
                f"Cannot use {self.description}: {type(exc).__name__}. Check that the server "
                "is running and DATABASE_URL is right."
            ) from None
        # close() closes one end to wake the listener, which sleeps until the
        # server or close() sends something instead of polling.
        self._stop_sender, self._stop_receiver = socket.socketpair()
        self._listener = threading.Thread(
            target=self._listen, name="fuseline-pg-listen", daemon=True
        )
        self._listener.start()

    def _migrate(self) -> None:
        with self._pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS fuseline_schema_version (version INTEGER NOT NULL)"
            )
            row = connection.execute("SELECT max(version) FROM fuseline_schema_version").fetchone()
            current = (row[0] if row else None) or 0
            steps = migrations(POSTGRESQL)
            for version in range(current, len(steps)):
                for statement in steps[version]:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO fuseline_schema_version (version) VALUES (%s)", (version + 1,)
                )

    def atomic(self, body: Callable[[StorageTransaction], T], *, write: bool = True) -> T:
        """Run ``body`` in one transaction, again when it lost a deadlock or serialization race."""
        for attempt in range(_RETRIES):
            try:
                return self._attempt(body, read_only=not write)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise BrokerUnavailableError(
                        "The database kept aborting the transaction; try again."
                    ) from None
                time.sleep(0.005 * (attempt + 1))
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
                raise BrokerUnavailableError(
                    f"{self.description} is unavailable ({type(exc).__name__}); try again."
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, body: Callable[[_PgTransaction], T], *, read_only: bool) -> T:
        failure: BaseException | None = None
        with self._pool.connection() as connection:
            transaction = _PgTransaction(
                connection, time.time, self._sender, first=self._first, read_only=read_only
            )
            try:
                result = body(transaction)
                transaction.before_commit()
                transaction.commit()
            except BaseException as exc:
                transaction.rollback()
                if not transaction.ended_early:
                    raise
                failure = exc
        if failure is not None:
            self._failed_after_commit(transaction)
            raise failure
        self._committed(transaction)
        return result

    def _failed_after_commit(self, transaction: _PgTransaction) -> None:
        """Tidy up after a body that failed once its COMMIT had gone out with a claim.

        What it wrote stands, so its waiters are woken and its callbacks
        run. The steps it claimed reach no worker, since the caller answers
        with the error: they go back to the queue now, rather than wait for
        their leases to run out and lose an attempt. If the database is
        unreachable for that too, the leases run out as they would for a
        worker that died.
        """
        claimed = transaction.claimed_with_commit

        def requeue(t: _PgTransaction) -> int:
            return t.give_back(claimed)

        if claimed:
            try:
                given = self._attempt(requeue, read_only=False)
            except Exception as exc:  # the caller hears of the original failure
                log.warning(
                    "could not requeue %d claimed steps after a failure (%s); "
                    "their leases will run out",
                    len(claimed),
                    type(exc).__name__,
                )
            else:
                log.info("requeued %d claimed steps whose claim failed after commit", given)
        self._committed(transaction)

    def _listen(self) -> None:
        """Turn NOTIFY from any broker process into local wake-ups; reconnect on loss."""
        pause = 0.1
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self._timeout))
                ) as connection:
                    first = _Presence.first(connection)
                    holding = first or _Presence.join(connection, self._stopped)
                    if holding is None:
                        return
                    # Whatever commits before this is in the tables when they
                    # are looked at below; whatever commits after is heard.
                    connection.execute(f"LISTEN {_WORK_CHANNEL}")
                    connection.execute(f"LISTEN {_RUNS_CHANNEL}")
                    self._first = first
                    pause = 0.1
                    # Anything may have happened while no one listened.
                    self._look()
                    self.listening.set()
                    self._hear(connection, holding)
            except psycopg.Error as exc:
                self.listening.clear()
                self._first = False
                if self._stopped.is_set():
                    return
                log.debug("notification listener lost its connection: %s", type(exc).__name__)
                self._stopped.wait(pause)
                pause = min(pause * 2, 5.0)

    def _hear(self, connection: psycopg.Connection[Any], holding: bool) -> None:
        """Pass notifications on until stopped; a later process also keeps the first notifying."""
        with selectors.DefaultSelector() as selector:
            selector.register(connection.fileno(), selectors.EVENT_READ)
            selector.register(self._stop_receiver, selectors.EVENT_READ)
            while not self._stopped.is_set():
                for note in connection.notifies(timeout=0):
                    self._wake(note)
                if selector.select(None if holding else self.poll_interval) or holding:
                    continue
                # Another later process held _OTHERS; in case it went away:
                if _Presence.join(connection, self._stopped):
                    holding = True
                    self._look()  # the first process may not have notified meanwhile

    def _look(self) -> None:
        """Make every waiter look at the tables."""
        self.work.fire()
        self.runs.fire()

    def _wake(self, note: Any) -> None:
        if note.payload == self._sender:
            return  # a commit of this process, whose waiters were woken at once
        if note.channel == _WORK_CHANNEL:
            self.work.fire()
        elif note.channel == _RUNS_CHANNEL:
            self.runs.fire()

    def close(self) -> None:
        """Stop listening and close the pool."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._stop_sender.close()
        self._pool.close()
        self._listener.join(timeout=2)
        if not self._listener.is_alive():
            self._stop_receiver.close()
