"""The SQL shared by the SQLite and PostgreSQL backends.

Both speak the same statements; a :class:`Dialect` covers what differs
(parameter markers, row locks, the clock, the identity column). Values are
stored as JSON text and times as seconds since the epoch, so one schema and
one set of statements serve both databases.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from fuseline.status import Status
from fuseline.storage._base import (
    StorageTransaction,
    StoredRun,
    StoredStep,
    StoredWorker,
    WorkflowKey,
    date_first_steps,
)
from fuseline.workflow import WorkflowSchema

__all__ = ["SCHEMA_VERSION", "Dialect", "SqlTransaction", "migrations"]


class Cursor(Protocol):
    """The part of a DB-API cursor the statements use."""

    def fetchone(self) -> Any:
        """One row or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...

    @property
    def rowcount(self) -> int:
        """How many rows the statement changed."""
        ...


class Connection(Protocol):
    """The part of a connection the statements use (sqlite3 and psycopg both have it)."""

    def execute(self, sql: Any, params: Any = ...) -> Any:
        """Run one statement."""
        ...


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL databases.

    Attributes:
        name: ``sqlite`` or ``postgresql``.
        marker: The parameter marker (``?`` or ``%s``).
        lock: Suffix that locks the selected rows until commit ("" when the
            whole database is locked by the transaction anyway).
        skip_locked: Suffix that locks rows and passes over those another
            transaction holds.
        seq_column: Definition of an auto-numbered primary key column.
        clock: An expression for the server's time in epoch seconds, or
            None to read this machine's clock.
    """

    name: str
    marker: str
    lock: str
    skip_locked: str
    seq_column: str
    clock: str | None

    def sql(self, statement: str) -> str:
        """``statement`` with ``?`` markers turned into this dialect's."""
        return statement if self.marker == "?" else statement.replace("?", self.marker)


SQLITE = Dialect(
    name="sqlite",
    marker="?",
    lock="",
    skip_locked="",
    seq_column="seq INTEGER PRIMARY KEY AUTOINCREMENT",
    clock=None,
)
POSTGRESQL = Dialect(
    name="postgresql",
    marker="%s",
    lock=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    seq_column="seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    clock="extract(epoch FROM clock_timestamp())::float8",
)

SCHEMA_VERSION = 2


def migrations(dialect: Dialect) -> list[list[str]]:
    """The statements that bring an empty database to each schema version, in order.

    Entry ``i`` upgrades version ``i`` to ``i + 1``. Add new entries at the
    end; never edit one that has shipped.
    """
    return [
        [
            """CREATE TABLE fuseline_schemas (
                workflow_id TEXT NOT NULL,
                version TEXT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (workflow_id, version))""",
            """CREATE TABLE fuseline_workers (
                worker_id TEXT PRIMARY KEY,
                name TEXT,
                workflows TEXT NOT NULL,
                registered_at DOUBLE PRECISION NOT NULL,
                last_seen_at DOUBLE PRECISION NOT NULL)""",
            f"""CREATE TABLE fuseline_runs (
                {dialect.seq_column},
                run_id TEXT NOT NULL UNIQUE,
                workflow_id TEXT NOT NULL,
                version TEXT NOT NULL,
                inputs TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                result TEXT,
                finished_steps INTEGER NOT NULL DEFAULT 0,
                idempotency_key TEXT UNIQUE,
                request_hash TEXT)""",
            "CREATE INDEX fuseline_runs_by_workflow ON fuseline_runs (workflow_id, seq)",
            "CREATE INDEX fuseline_runs_by_status ON fuseline_runs (status, seq)",
            """CREATE INDEX fuseline_runs_by_finish ON fuseline_runs (finished_at)
                WHERE finished_at IS NOT NULL""",
            """CREATE TABLE fuseline_steps (
                run_id TEXT NOT NULL,
                step_name TEXT NOT NULL,
                workflow_id TEXT NOT NULL,
                version TEXT NOT NULL,
                status TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                max_attempts INTEGER NOT NULL,
                lease_seconds DOUBLE PRECISION NOT NULL,
                worker_id TEXT,
                lease_token TEXT,
                deadline DOUBLE PRECISION,
                result TEXT,
                error TEXT,
                branch TEXT,
                finish_order INTEGER,
                or_winners TEXT NOT NULL,
                ready_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                PRIMARY KEY (run_id, step_name))""",
            """CREATE INDEX fuseline_steps_queue ON fuseline_steps (ready_at)
                WHERE status = 'PENDING'""",
            """CREATE INDEX fuseline_steps_leases ON fuseline_steps (deadline)
                WHERE status = 'RUNNING'""",
            """CREATE INDEX fuseline_steps_holders ON fuseline_steps (worker_id)
                WHERE status = 'RUNNING'""",
        ],
        _vacuum_settings(dialect),
    ]


def _vacuum_settings(dialect: Dialect) -> list[str]:
    """Version 2: PostgreSQL's autovacuum looks after the busy tables early.

    Every step leaves two or three dead row versions behind (queued,
    running, finished), and the claim walks the queue's index past the dead
    entries of finished steps until a vacuum removes them. Left at the
    server's defaults, autovacuum waits for a fifth of a table to be dead,
    which on a table that keeps its history means ever longer waits and
    ever slower claims. A fixed threshold keeps that bounded. SQLite reuses
    the space itself: nothing to do there.
    """
    if dialect.name != "postgresql":
        return []
    settings = (
        "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
        "autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000"
    )
    return [
        f"ALTER TABLE {table} SET ({settings})" for table in ("fuseline_steps", "fuseline_runs")
    ]


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_STEP_COLUMNS = (
    "run_id, step_name, workflow_id, version, status, attempt, max_attempts, lease_seconds, "
    "worker_id, lease_token, deadline, result, error, branch, finish_order, or_winners, "
    "ready_at, started_at, finished_at"
)
_STEP_NAMES = _STEP_COLUMNS.split(", ")
# The SQL types of the step columns, in order, for rows sent as VALUES.
_STEP_TYPES = (
    *("text",) * 5,
    "integer",
    "integer",
    "double precision",
    "text",
    "text",
    "double precision",
    "text",
    "text",
    "text",
    "integer",
    "text",
    *("double precision",) * 3,
)
# A run's first steps are created when the run is.
_FIRST_STEP_PICKS = {
    "ready_at": "new_run.created_at",
    "finished_at": "CASE WHEN v.status = 'PENDING' THEN NULL ELSE new_run.created_at END",
}
_RUN_COLUMNS = (
    "run_id, workflow_id, version, inputs, status, created_at, finished_at, cancel_requested, "
    "result, finished_steps, idempotency_key, request_hash, seq"
)
_RUN_COLUMN_COUNT = _RUN_COLUMNS.count(",") + 1


@functools.lru_cache(maxsize=64)
def _run_with_steps_statement(run_insert: str, run_values: int, step_count: int) -> str:
    """The statement that inserts a run and ``step_count`` first steps (PostgreSQL).

    The steps are inserted only when the run is, dated from its ``created_at``.
    Cached: the text depends only on the run's insert and the number of steps.
    """
    picked = ", ".join(_FIRST_STEP_PICKS.get(column, f"v.{column}") for column in _STEP_NAMES)
    steps = _typed_rows(_STEP_TYPES, step_count, run_values)
    return (
        f"WITH new_run AS ({run_insert}), "
        f"new_steps AS (INSERT INTO fuseline_steps ({_STEP_COLUMNS}) SELECT {picked} "
        f"FROM new_run, {steps} AS v({_STEP_COLUMNS})) "
        "SELECT seq, created_at FROM new_run"
    )


# psycopg keeps the converted text of a statement of at most this many
# parameters; one of more is converted from its text again on every call.
_PSYCOPG_CACHED_PARAMS = 50


def _row_per_param(count: int, width: int, others: int) -> bool:
    """Whether rows go as one JSON parameter each rather than one parameter per value."""
    return others + count * width > _PSYCOPG_CACHED_PARAMS


def _typed_rows(types: Sequence[str], count: int, others: int = 0) -> str:
    """A ``VALUES`` list of ``count`` typed rows, for a statement with ``others`` parameters more.

    Each value is a parameter of its own while the statement stays within
    what psycopg keeps converted; beyond, each row is one JSON parameter
    (:func:`row_params`), since converting a statement's text costs more
    than reading JSON (a third of a millisecond for four step rows on a slow
    machine). Either way the rows stay a ``VALUES`` list, so the planner
    knows how many there are and looks each one up by its key: rows from a
    function over one JSON array would be guessed at a hundred and joined
    by scanning the whole table.
    """
    if not _row_per_param(count, len(types), others):
        row = "(" + ", ".join(f"?::{kind}" for kind in types) + ")"
        return f"(VALUES {', '.join([row] * count)})"
    picks = ", ".join(f"(r->>{index})::{kind}" for index, kind in enumerate(types))
    rows = ", ".join(["(?::json)"] * count)
    return f"(SELECT {picks} FROM (VALUES {rows}) AS j(r))"


def row_params(rows: Sequence[Sequence[Any]], others: int = 0) -> tuple[Any, ...]:
    """The parameters of ``rows`` (plain values: text, numbers, None) for :func:`_typed_rows`.

    A row sent as JSON keeps every value exact: a float's JSON is the
    shortest text that reads back as the same number, and the server reads
    that text as the column's type. Stored floats are finite (times and
    durations), as JSON has no infinity.
    """
    if not rows or not _row_per_param(len(rows), len(rows[0]), others):
        return tuple(value for row in rows for value in row)
    return tuple(
        json.dumps(row, separators=(",", ":"), ensure_ascii=False, allow_nan=False) for row in rows
    )


# The columns a step update writes (all but the key and the workflow version).
_STEP_CHANGES = _STEP_NAMES[4:]
_RUN_CHANGES = ("status", "finished_at", "cancel_requested", "result", "finished_steps")
_RUN_CHANGE_TYPES = ("text", "double precision", "integer", "text", "integer")


@functools.lru_cache(maxsize=64)
def steps_insert_statement(count: int) -> str:
    """The statement that inserts ``count`` step rows, from :func:`row_params` when several."""
    if count == 1:
        row = "(" + ", ".join("?" * len(_STEP_NAMES)) + ")"
        return f"INSERT INTO fuseline_steps ({_STEP_COLUMNS}) VALUES {row}"
    rows = _typed_rows(_STEP_TYPES, count)
    return f"INSERT INTO fuseline_steps ({_STEP_COLUMNS}) SELECT * FROM {rows} AS v"


@functools.lru_cache(maxsize=64)
def steps_update_statement(count: int) -> str:
    """The statement that writes ``count`` steps' changing fields, from :func:`step_change`.

    One row takes its values with the key last (:func:`key_last`); several
    go as :func:`row_params` (PostgreSQL).
    """
    if count == 1:
        assignments = ", ".join(f"{column} = ?" for column in _STEP_CHANGES)
        return f"UPDATE fuseline_steps SET {assignments} WHERE run_id = ? AND step_name = ?"
    columns = ("run_id", "step_name", *_STEP_CHANGES)
    types = (*_STEP_TYPES[:2], *_STEP_TYPES[4:])
    return (
        "UPDATE fuseline_steps AS s SET "
        + ", ".join(f"{column} = v.{column}" for column in _STEP_CHANGES)
        + f" FROM {_typed_rows(types, count)} AS v({', '.join(columns)}) "
        + "WHERE s.run_id = v.run_id AND s.step_name = v.step_name"
    )


def step_change(step: StoredStep) -> tuple[Any, ...]:
    """A step's values for :func:`steps_update_statement`: its key, then what changes.

    The statement for several rows takes them so; the one for a single row
    wants the key last (:func:`key_last`).
    """
    values = step_values(step)
    return values[:2] + values[4:]


@functools.lru_cache(maxsize=64)
def runs_update_statement(count: int) -> str:
    """The statement that writes ``count`` runs' changing fields, from :func:`run_change`.

    Values go as for :func:`steps_update_statement`.
    """
    if count == 1:
        assignments = ", ".join(f"{column} = ?" for column in _RUN_CHANGES)
        return f"UPDATE fuseline_runs SET {assignments} WHERE run_id = ?"
    columns = ("run_id", *_RUN_CHANGES)
    return (
        "UPDATE fuseline_runs AS r SET "
        + ", ".join(f"{column} = v.{column}" for column in _RUN_CHANGES)
        + f" FROM {_typed_rows(('text', *_RUN_CHANGE_TYPES), count)} "
        + f"AS v({', '.join(columns)}) WHERE r.run_id = v.run_id"
    )


def run_change(run: StoredRun) -> tuple[Any, ...]:
    """A run's values for :func:`runs_update_statement`: its id, then what changes."""
    return (
        run.run_id,
        run.status.value,
        run.finished_at,
        int(run.cancel_requested),
        None if run.result is None else _dump(run.result),
        run.finished_steps,
    )


def key_last(values: tuple[Any, ...], key_size: int) -> tuple[Any, ...]:
    """``values`` with the leading key moved to the end (for a one-row update)."""
    return values[key_size:] + values[:key_size]


def _qualified(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns.split(", "))


def _marks(values: Sized) -> str:
    """One parameter marker per value, for an ``IN (...)`` list."""
    return ", ".join("?" * len(values))


def _step(row: Sequence[Any]) -> StoredStep:
    return StoredStep(
        run_id=row[0],
        step_name=row[1],
        workflow_id=row[2],
        version=row[3],
        status=Status(row[4]),
        attempt=row[5],
        max_attempts=row[6],
        lease_seconds=row[7],
        worker_id=row[8],
        lease_token=row[9],
        deadline=row[10],
        result=_load(row[11]),
        error=_load(row[12]),
        branch=row[13],
        finish_order=row[14],
        or_winners=_load(row[15]),
        ready_at=row[16],
        started_at=row[17],
        finished_at=row[18],
    )


def step_values(step: StoredStep) -> tuple[Any, ...]:
    return (
        step.run_id,
        step.step_name,
        step.workflow_id,
        step.version,
        step.status.value,
        step.attempt,
        step.max_attempts,
        step.lease_seconds,
        step.worker_id,
        step.lease_token,
        step.deadline,
        _dump(step.result) if step.status is Status.SUCCEEDED else None,
        None if step.error is None else _dump(step.error),
        step.branch,
        step.finish_order,
        _dump(step.or_winners),
        step.ready_at,
        step.started_at,
        step.finished_at,
    )


def _run(row: Sequence[Any]) -> StoredRun:
    return StoredRun(
        run_id=row[0],
        workflow_id=row[1],
        version=row[2],
        inputs=_load(row[3]),
        status=Status(row[4]),
        created_at=row[5],
        finished_at=row[6],
        cancel_requested=bool(row[7]),
        result=_load(row[8]),
        finished_steps=row[9],
        idempotency_key=row[10],
        request_hash=row[11],
        seq=row[12],
    )


class SqlTransaction(StorageTransaction):
    """The storage operations as SQL statements on one open transaction."""

    def __init__(
        self, connection: Connection, dialect: Dialect, clock: Callable[[], float]
    ) -> None:
        self._connection = connection
        self._dialect = dialect
        self._clock = clock
        self._now: float | None = None
        self.work_changed = False
        self.runs_changed = False
        # The steps claimed by the write that carried COMMIT (PostgreSQL):
        # leased for good, though the caller has not handed them out yet.
        self.claimed_with_commit: list[StoredStep] = []
        # A run whose held insert read the clock (see add_run_with_steps_later),
        # and what reads that insert's answer: until then, the transaction's
        # clock is the run's created_at.
        self._clock_run: tuple[str, Callable[[], bool]] | None = None

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return self._connection.execute(self._dialect.sql(statement), tuple(params))  # type: ignore[no-any-return]

    def _write(self, statement: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result nothing reads; a backend may send it later."""
        self._execute(statement, params)

    def _write_read_later(self, statement: str, params: Sequence[Any]) -> Callable[[], Cursor]:
        """A write whose result is read later, by calling what this returns.

        A backend may hold it like a write until it sends the statements that
        follow it; asking for the result sends it at once if it is still held.
        """
        cursor = self._execute(statement, params)
        return lambda: cursor

    def flush(self) -> None:
        """Send the writes held back, if the backend holds any."""

    def before_commit(self) -> None:
        """Settle the wake-ups; backends call this just before COMMIT."""
        self.settle_wakeups()

    def _clock_unread(self) -> str | None:
        """The server's clock expression, while this transaction has not read it yet."""
        self._settle_clock()
        return self._dialect.clock if self._now is None else None

    def _settle_clock(self) -> None:
        """Take the clock from a held run insert that read it, sending it now if need be."""
        if self._now is None and self._clock_run is not None:
            self._clock_run[1]()

    def now(self) -> float:
        """The storage clock, read once per transaction."""
        self._settle_clock()
        if self._now is None:
            if self._dialect.clock is None:
                self._now = self._clock()
            else:
                self._now = float(self._execute(f"SELECT {self._dialect.clock}").fetchone()[0])
        return self._now

    # -- schemas ------------------------------------------------------------------
    def get_schema(self, key: WorkflowKey) -> WorkflowSchema | None:
        """The schema stored under ``key``."""
        row = self._execute(
            "SELECT body FROM fuseline_schemas WHERE workflow_id = ? AND version = ?", key
        ).fetchone()
        return None if row is None else WorkflowSchema.model_validate_json(row[0])

    def add_schema(self, schema: WorkflowSchema) -> None:
        """Store ``schema`` unless its key is taken."""
        self._write(
            "INSERT INTO fuseline_schemas (workflow_id, version, body) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (schema.workflow_id, schema.version, schema.model_dump_json()),
        )

    def list_schemas(self) -> list[WorkflowSchema]:
        """Every stored schema."""
        rows = self._execute(
            "SELECT body FROM fuseline_schemas ORDER BY workflow_id, version"
        ).fetchall()
        return [WorkflowSchema.model_validate_json(row[0]) for row in rows]

    def schema_versions(self, workflow_id: str) -> list[str]:
        """The versions stored for ``workflow_id``."""
        rows = self._execute(
            "SELECT version FROM fuseline_schemas WHERE workflow_id = ?", (workflow_id,)
        ).fetchall()
        return [row[0] for row in rows]

    # -- workers ------------------------------------------------------------------
    def add_worker(self, worker: StoredWorker) -> None:
        """Store a new worker."""
        self._write(
            "INSERT INTO fuseline_workers "
            "(worker_id, name, workflows, registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?)",
            (
                worker.worker_id,
                worker.name,
                _dump([list(key) for key in worker.workflows]),
                worker.registered_at,
                worker.last_seen_at,
            ),
        )

    def _worker(self, row: Sequence[Any]) -> StoredWorker:
        return StoredWorker(
            worker_id=row[0],
            name=row[1],
            workflows=[(w, v) for w, v in _load(row[2])],
            registered_at=row[3],
            last_seen_at=row[4],
        )

    def get_worker(self, worker_id: str) -> StoredWorker | None:
        """The worker with that id."""
        row = self._execute(
            "SELECT worker_id, name, workflows, registered_at, last_seen_at "
            "FROM fuseline_workers WHERE worker_id = ?",
            (worker_id,),
        ).fetchone()
        return None if row is None else self._worker(row)

    def touch_worker(self, worker_id: str, seen_at: float) -> None:
        """Record that the worker was heard from."""
        self._write(
            "UPDATE fuseline_workers SET last_seen_at = ? WHERE worker_id = ?",
            (seen_at, worker_id),
        )

    def list_workers(self) -> list[StoredWorker]:
        """Every worker."""
        rows = self._execute(
            "SELECT worker_id, name, workflows, registered_at, last_seen_at "
            "FROM fuseline_workers ORDER BY registered_at, worker_id"
        ).fetchall()
        return [self._worker(row) for row in rows]

    # -- runs ---------------------------------------------------------------------
    def add_run(self, run: StoredRun) -> bool:
        """Store a new run unless its idempotency key is taken.

        When the clock was not read yet and is the server's, the insert reads
        it: the run's ``created_at`` comes back with its ``seq``.
        """
        row = self._execute(*self._run_insert(run)).fetchone()
        return self._run_inserted(run, row)

    def add_run_with_steps(
        self, run: StoredRun, steps: Sequence[StoredStep], *, last: bool = False
    ) -> bool:
        """The run and its first steps in one statement (PostgreSQL).

        The steps take their times from the run's ``created_at`` in SQL, and
        are inserted only when the run is. With ``last``, the statement
        carries ``COMMIT``, and the ``NOTIFY`` for the new steps before it.
        """
        if not steps or self._dialect.name != "postgresql":
            return super().add_run_with_steps(run, steps, last=last)
        statement, params = self._run_with_steps(run, steps)
        if last:
            cursor = self._execute_last(statement, params, settled=True)
        else:
            cursor = self._execute(statement, params)
        return self._run_with_steps_stored(run, steps, cursor.fetchone())

    def add_run_with_steps_later(
        self, run: StoredRun, steps: Sequence[StoredStep]
    ) -> Callable[[], bool]:
        """:meth:`add_run_with_steps`, held on PostgreSQL until what follows is sent.

        The one statement that stores the run and its steps then shares the
        round trip of the next read or claim, and the answer is read when
        the caller asks for it.
        """
        if not steps or self._dialect.name != "postgresql":
            return super().add_run_with_steps_later(run, steps)
        result = self._write_read_later(*self._run_with_steps(run, steps))
        answer: list[bool] = []

        def stored() -> bool:
            if not answer:
                self._clock_run = None
                answer.append(self._run_with_steps_stored(run, steps, result().fetchone()))
            return answer[0]

        if self._now is None:
            self._clock_run = (run.run_id, stored)
        return stored

    def _run_with_steps(self, run: StoredRun, steps: Sequence[StoredStep]) -> tuple[str, list[Any]]:
        """The statement that stores the run and its first steps, and its values."""
        for step in steps:
            if step.status is Status.PENDING:
                self._made_ready(step)
        run_insert, run_values = self._run_insert(run)
        statement = _run_with_steps_statement(run_insert, len(run_values), len(steps))
        rows = [step_values(step) for step in steps]
        return statement, [*run_values, *row_params(rows, len(run_values))]

    def _run_with_steps_stored(
        self, run: StoredRun, steps: Sequence[StoredStep], row: Sequence[Any] | None
    ) -> bool:
        """Whether :meth:`_run_with_steps` stored the run, from the row it returned."""
        if not self._run_inserted(run, row):
            # Nothing was stored, so nothing was queued: the steps count as
            # taken (a NOTIFY sent with the commit only wakes claims that
            # then find nothing).
            self._took(step for step in steps if step.status is Status.PENDING)
            self.settle_wakeups()
            return False
        date_first_steps(run, steps)
        return True

    def _run_insert(self, run: StoredRun) -> tuple[str, tuple[Any, ...]]:
        """The statement that inserts ``run`` unless its key is taken, and its values.

        It returns the run's ``seq`` and ``created_at``, which is the
        server's clock when that was not read yet.
        """
        clock = self._clock_unread()
        if clock is None:
            run.created_at = self.now()
        values = (
            run.run_id,
            run.workflow_id,
            run.version,
            _dump(run.inputs),
            run.status.value,
            *(() if clock else (run.created_at,)),
            run.finished_at,
            int(run.cancel_requested),
            None if run.result is None else _dump(run.result),
            run.finished_steps,
            run.idempotency_key,
            run.request_hash,
        )
        statement = (
            "INSERT INTO fuseline_runs (run_id, workflow_id, version, inputs, status, "
            "created_at, finished_at, cancel_requested, result, finished_steps, "
            f"idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, {clock or '?'}, "
            "?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq, created_at"
        )
        return statement, values

    def _run_inserted(self, run: StoredRun, row: Sequence[Any] | None) -> bool:
        """Whether the run's insert stored it; notes its ``seq`` and the clock it read."""
        if row is None:
            return False
        run.seq = row[0]
        if self._now is None:
            self._now = float(row[1])
        run.created_at = float(row[1])
        return True

    def find_run_by_key(self, idempotency_key: str) -> StoredRun | None:
        """The run created with that idempotency key."""
        row = self._execute(
            f"SELECT {_RUN_COLUMNS} FROM fuseline_runs WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
        return None if row is None else _run(row)

    def _runs_query(
        self, where: str, params: Sequence[Any], lock: bool
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement that selects runs matching ``where``; locked until commit when ``lock``.

        When the clock was not read yet, the server's clock comes back as an
        extra column: most transactions that read a run need it next.
        """
        suffix = self._dialect.lock if lock else ""
        clock = self._clock_unread()
        extra = f", {clock}" if clock else ""
        return f"SELECT {_RUN_COLUMNS}{extra} FROM fuseline_runs WHERE {where}{suffix}", tuple(
            params
        )

    def _runs_from(self, rows: Sequence[Any]) -> list[StoredRun]:
        """Runs from the rows of :meth:`_runs_query`, noting the clock if it came along."""
        if rows and len(rows[0]) > _RUN_COLUMN_COUNT:
            if self._now is None:
                self._now = float(rows[0][-1])
            return [_run(row[:-1]) for row in rows]
        return [_run(row) for row in rows]

    def _select_runs(self, where: str, params: Sequence[Any], lock: bool) -> list[StoredRun]:
        """Runs matching ``where``; locked until commit when ``lock``."""
        return self._runs_from(self._execute(*self._runs_query(where, params, lock)).fetchall())

    def _read_all(self, reads: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[Any]]:
        """The rows of each read, run in order; a backend may send them in one round trip."""
        return [self._execute(statement, params).fetchall() for statement, params in reads]

    def _execute_last(
        self, statement: str, params: Sequence[Any] = (), *, settled: bool = False
    ) -> Cursor:
        """The transaction's last write, whose result is read; a backend may commit with it.

        ``settled``: what the transaction wakes is known before the statement
        runs, so a backend may send its notifications with the commit.
        """
        return self._execute(statement, params)

    def get_run(self, run_id: str, *, lock: bool = False) -> StoredRun | None:
        """The run, locked until commit when ``lock``."""
        found = self._select_runs("run_id = ?", (run_id,), lock)
        return found[0] if found else None

    def runs_by_id(self, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, StoredRun]:
        """The runs that exist among ``run_ids``, in one statement (locked in id order)."""
        if not run_ids:
            return {}
        where = f"run_id IN ({_marks(run_ids)}) ORDER BY run_id"
        return {run.run_id: run for run in self._select_runs(where, tuple(run_ids), lock)}

    def steps_of_runs(self, run_ids: Sequence[str]) -> dict[str, list[StoredStep]]:
        """Every step row of each of the runs, in one statement."""
        if not run_ids:
            return {}
        return self._steps_by_run(run_ids, self._execute(*self._steps_query(run_ids)).fetchall())

    def runs_with_steps(
        self, run_ids: Sequence[str], *, lock: bool = False
    ) -> tuple[dict[str, StoredRun], dict[str, list[StoredStep]]]:
        """The runs and their steps in two statements, which a backend may send together.

        The server runs the second statement only once the first one holds
        its locks, and at READ COMMITTED a statement sees what was committed
        before it started: so the steps are as fresh as the locked runs.
        """
        if not run_ids:
            return {}, {}
        where = f"run_id IN ({_marks(run_ids)}) ORDER BY run_id"
        run_rows, step_rows = self._read_all(
            [self._runs_query(where, run_ids, lock), self._steps_query(run_ids)]
        )
        runs = {run.run_id: run for run in self._runs_from(run_rows)}
        return runs, self._steps_by_run(list(runs), step_rows)

    @staticmethod
    def _steps_query(run_ids: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        return (
            f"SELECT {_STEP_COLUMNS} FROM fuseline_steps WHERE run_id IN ({_marks(run_ids)})",
            tuple(run_ids),
        )

    @staticmethod
    def _steps_by_run(run_ids: Sequence[str], rows: Sequence[Any]) -> dict[str, list[StoredStep]]:
        found: dict[str, list[StoredStep]] = {run_id: [] for run_id in run_ids}
        for row in rows:
            steps = found.get(row[0])
            if steps is not None:
                steps.append(_step(row))
        return found

    def start_runs(self, run_ids: Sequence[str]) -> None:
        """Mark the PENDING ones of the runs RUNNING, in one statement."""
        if not run_ids:
            return
        marks = _marks(run_ids)
        self._write(
            "UPDATE fuseline_runs SET status = 'RUNNING' "
            f"WHERE run_id IN ({marks}) AND status = 'PENDING'",
            tuple(run_ids),
        )

    def start_run(self, run_id: str) -> None:
        """Mark a PENDING run RUNNING without reading it first."""
        self._write(
            "UPDATE fuseline_runs SET status = 'RUNNING' WHERE run_id = ? AND status = 'PENDING'",
            (run_id,),
        )

    def update_run(self, run: StoredRun) -> None:
        """Write the run's changing fields."""
        self._write(runs_update_statement(1), key_last(run_change(run), 1))

    def list_runs(
        self,
        *,
        workflow_id: str | None,
        status: Status | None,
        limit: int,
        before_seq: int | None,
    ) -> list[StoredRun]:
        """Runs newest first."""
        where: list[str] = []
        params: list[Any] = []
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._execute(
            f"SELECT {_RUN_COLUMNS} FROM fuseline_runs{clause} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_run(row) for row in rows]

    def delete_finished_runs(self, finished_before: float, limit: int) -> int:
        """Delete old finished runs and their steps."""
        rows = self._execute(
            "SELECT run_id FROM fuseline_runs WHERE finished_at IS NOT NULL AND finished_at < ? "
            f"ORDER BY finished_at LIMIT ?{self._dialect.skip_locked}",
            (finished_before, limit),
        ).fetchall()
        for (run_id,) in rows:
            self._execute("DELETE FROM fuseline_steps WHERE run_id = ?", (run_id,))
            self._execute("DELETE FROM fuseline_runs WHERE run_id = ?", (run_id,))
        return len(rows)

    # -- steps --------------------------------------------------------------------
    def steps_of(self, run_id: str, *, lock: bool = False) -> list[StoredStep]:
        """Every step row of the run, locked until commit when ``lock``."""
        suffix = self._dialect.lock if lock else ""
        rows = self._execute(
            f"SELECT {_STEP_COLUMNS} FROM fuseline_steps WHERE run_id = ?{suffix}", (run_id,)
        ).fetchall()
        return [_step(row) for row in rows]

    def get_step(self, run_id: str, step_name: str) -> StoredStep | None:
        """One step row."""
        row = self._execute(
            f"SELECT {_STEP_COLUMNS} FROM fuseline_steps WHERE run_id = ? AND step_name = ?",
            (run_id, step_name),
        ).fetchone()
        return None if row is None else _step(row)

    def add_steps(self, steps: Sequence[StoredStep]) -> None:
        """Create step rows; the primary key refuses a second row for a step."""
        for step in steps:
            self._write(steps_insert_statement(1), step_values(step))
            if step.status is Status.PENDING:
                self._made_ready(step)

    def update_step(self, step: StoredStep) -> None:
        """Write every field of an existing step row."""
        self._write(steps_update_statement(1), key_last(step_change(step), 2))
        if step.status is Status.PENDING:
            self._made_ready(step)

    def claim_steps(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        tokens: Callable[[], str],
    ) -> list[StoredStep]:
        """Hand queued steps to the worker, oldest first, skipping rows others hold."""
        if not workflows or limit < 1:
            return []
        keys = " OR ".join("(workflow_id = ? AND version = ?)" for _ in workflows)
        key_values = tuple(part for key in workflows for part in key)
        if self._dialect.name == "postgresql":
            return self.claim_steps_with_runs(worker_id, workflows, limit, tokens)[0]
        picked = self._execute(
            "SELECT run_id, step_name FROM fuseline_steps "
            f"WHERE status = 'PENDING' AND ({keys}) "
            f"ORDER BY ready_at LIMIT ?{self._dialect.skip_locked}",
            (*key_values, limit),
        ).fetchall()
        now = self.now()
        claimed: list[StoredStep] = []
        for run_id, step_name in picked:
            row = self._execute(
                "UPDATE fuseline_steps SET status = 'RUNNING', attempt = attempt + 1, "
                "worker_id = ?, lease_token = ?, deadline = ? + lease_seconds, started_at = ? "
                f"WHERE run_id = ? AND step_name = ? AND status = 'PENDING' "
                f"RETURNING {_STEP_COLUMNS}",
                (worker_id, tokens(), now, now, run_id, step_name),
            ).fetchone()
            if row is not None:
                claimed.append(_step(row))
        self._took(claimed)
        return claimed

    def claim_steps_with_runs(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        tokens: Callable[[], str],
        *,
        known: Collection[str] = (),
        start: bool = False,
        last: bool = False,
    ) -> tuple[list[StoredStep], dict[str, StoredRun]]:
        """Claim, and read the claimed steps' runs; on PostgreSQL in one round trip.

        One statement picks, locks and leases the oldest steps, each with its
        own token, and returns each with its run (read, not locked) and, when
        this transaction has not read the clock yet, the clock. With
        ``start`` it also marks the PENDING runs among them RUNNING (locked
        in id order first, so that claims starting the same runs wait for
        each other rather than deadlock). With ``last`` the commit goes in
        the same round trip.
        """
        if self._dialect.name != "postgresql":
            return super().claim_steps_with_runs(
                worker_id, workflows, limit, tokens, known=known, start=start, last=last
            )
        if not workflows or limit < 1:
            return [], {}
        keys = " OR ".join("(workflow_id = ? AND version = ?)" for _ in workflows)
        key_values = tuple(part for key in workflows for part in key)
        starting = (
            "starting AS MATERIALIZED (SELECT run_id FROM fuseline_runs "
            "WHERE status = 'PENDING' AND run_id IN (SELECT pr FROM picked) "
            "ORDER BY run_id FOR UPDATE), "
            "started AS (UPDATE fuseline_runs AS u SET status = 'RUNNING' FROM starting "
            "WHERE u.run_id = starting.run_id AND u.status = 'PENDING') "
            if start
            else ""
        )
        clock = self._dialect.clock
        clock_values: tuple[Any, ...] = (self._now,)
        if self._now is None and self._clock_run is not None:
            # Sent with the held insert of a run that read the clock: the
            # claim takes that run's, so the transaction keeps one clock (a
            # run refused for its key stored none, and the claim reads its own).
            clock = f"(SELECT created_at FROM fuseline_runs WHERE run_id = ?), {clock}"
            clock_values = (None, self._clock_run[0])
        statement = (
            f"WITH clock AS (SELECT coalesce(?::float8, {clock}) AS t), "
            "locked AS MATERIALIZED (SELECT run_id AS pr, step_name AS ps, "
            "ready_at AS ra FROM fuseline_steps "
            f"WHERE status = 'PENDING' AND ({keys}) "
            f"ORDER BY ready_at LIMIT ?{self._dialect.skip_locked}), "
            "picked AS (SELECT pr, ps, row_number() OVER (ORDER BY ra, pr, ps) AS n "
            f"FROM locked){', ' if start else ' '}{starting}"
            "UPDATE fuseline_steps AS s SET status = 'RUNNING', attempt = s.attempt + 1, "
            "worker_id = ?, lease_token = (?::text[])[picked.n], "
            "deadline = clock.t + s.lease_seconds, started_at = clock.t "
            "FROM picked, clock, fuseline_runs AS r "
            "WHERE s.run_id = picked.pr AND s.step_name = picked.ps AND r.run_id = picked.pr "
            f"RETURNING {_qualified('s', _STEP_COLUMNS)}, clock.t, "
            f"{_qualified('r', _RUN_COLUMNS)}"
        )
        params = (*clock_values, *key_values, limit, worker_id, [tokens() for _ in range(limit)])
        rows = (self._execute_last if last else self._execute)(statement, params).fetchall()
        width = len(_STEP_COLUMNS.split(", "))
        if rows and self._now is None:
            self._now = float(rows[0][width])
        # RETURNING follows no order: hand them out oldest first.
        steps = sorted((_step(row[:width]) for row in rows), key=lambda step: step.ready_at)
        runs = {run.run_id: run for run in (_run(row[width + 1 :]) for row in rows)}
        self._took(steps)
        if last:
            self.claimed_with_commit = steps
        return steps, runs

    def leases_of(self, worker_id: str) -> tuple[list[StoredStep], set[str]]:
        """The worker's RUNNING steps with their runs' cancellation requests, in one statement.

        On PostgreSQL the clock comes in the same round trip when this
        transaction has not read it yet.
        """
        reads: list[tuple[str, tuple[Any, ...]]] = [
            (
                f"SELECT {_qualified('s', _STEP_COLUMNS)}, r.cancel_requested "
                "FROM fuseline_steps AS s JOIN fuseline_runs AS r ON r.run_id = s.run_id "
                "WHERE s.worker_id = ? AND s.status = 'RUNNING'",
                (worker_id,),
            )
        ]
        clock = self._clock_unread()
        if clock is not None:
            reads.insert(0, (f"SELECT {clock}", ()))
        *clock_rows, rows = self._read_all(reads)
        if clock_rows:
            self._now = float(clock_rows[0][0][0])
        width = len(_STEP_NAMES)
        return [_step(row[:width]) for row in rows], {row[0] for row in rows if row[width]}

    def extend_lease(self, step: StoredStep, deadline: float) -> bool:
        """Move a RUNNING step's deadline if its lease token is unchanged."""
        row = self._execute(
            "UPDATE fuseline_steps SET deadline = ? WHERE run_id = ? AND step_name = ? "
            "AND status = 'RUNNING' AND lease_token = ? RETURNING step_name",
            (deadline, step.run_id, step.step_name, step.lease_token),
        ).fetchone()
        return row is not None

    def extend_leases(
        self, leases: Sequence[tuple[StoredStep, float]], *, last: bool = False
    ) -> set[tuple[str, str]]:
        """Move several deadlines; on PostgreSQL in one statement, with ``COMMIT`` if ``last``."""
        if self._dialect.name != "postgresql" or not leases:
            return super().extend_leases(leases, last=last)
        rows = (self._execute_last if last else self._execute)(
            "UPDATE fuseline_steps AS s SET deadline = v.deadline "
            "FROM unnest(?::text[], ?::text[], ?::text[], ?::float8[]) "
            "AS v(run_id, step_name, lease_token, deadline) "
            "WHERE s.run_id = v.run_id AND s.step_name = v.step_name "
            "AND s.status = 'RUNNING' AND s.lease_token = v.lease_token "
            "RETURNING s.run_id, s.step_name",
            (
                [step.run_id for step, _ in leases],
                [step.step_name for step, _ in leases],
                [step.lease_token for step, _ in leases],
                [deadline for _, deadline in leases],
            ),
        ).fetchall()
        return {(row[0], row[1]) for row in rows}

    def expired_steps(self, limit: int) -> list[tuple[str, str]]:
        """RUNNING steps whose deadline has passed."""
        rows = self._execute(
            "SELECT run_id, step_name FROM fuseline_steps "
            "WHERE status = 'RUNNING' AND deadline < ? ORDER BY deadline LIMIT ?",
            (self.now(), limit),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def results_of(self, run_id: str, step_names: Sequence[str]) -> dict[str, Any]:
        """Results of the named steps that SUCCEEDED."""
        if not step_names:
            return {}
        marks = _marks(step_names)
        rows = self._execute(
            "SELECT step_name, result FROM fuseline_steps WHERE run_id = ? "
            f"AND status = 'SUCCEEDED' AND step_name IN ({marks})",
            (run_id, *step_names),
        ).fetchall()
        return {row[0]: _load(row[1]) for row in rows}

    def results_for(self, wanted: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Any]]:
        """Results of the named SUCCEEDED steps of several runs, in one statement."""
        pairs = {(run_id, name) for run_id, names in wanted for name in names}
        if len(wanted) <= 1 or not pairs:
            return [self.results_of(run_id, names) for run_id, names in wanted]
        # Matched by run id and by step name separately, which both databases
        # answer from the primary key (SQLite scans the table for a list of
        # row values); the exact pairs are picked out here.
        run_ids = sorted({run_id for run_id, _ in pairs})
        names = sorted({name for _, name in pairs})
        rows = self._execute(
            "SELECT run_id, step_name, result FROM fuseline_steps WHERE status = 'SUCCEEDED' "
            f"AND run_id IN ({_marks(run_ids)}) AND step_name IN ({_marks(names)})",
            (*run_ids, *names),
        ).fetchall()
        found: dict[str, dict[str, Any]] = {}
        for run_id, step_name, result in rows:
            if (run_id, step_name) in pairs:
                found.setdefault(run_id, {})[step_name] = _load(result)
        return [dict(found.get(run_id, {})) for run_id, _ in wanted]

    # -- wake-ups -----------------------------------------------------------------
    def notify_work(self) -> None:
        """Remember to wake waiting claims after commit, whatever this transaction claims."""
        self._wake_anyway = True
        self.work_changed = True

    def notify_runs(self) -> None:
        """Remember to wake run waiters after commit."""
        self.runs_changed = True
