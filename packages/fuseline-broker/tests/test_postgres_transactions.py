"""How a PostgreSQL transaction talks to the server.

``BEGIN`` goes out with the transaction's first statement and ``COMMIT``
with its last held writes, so a transaction that reads and then writes is
two round trips. These cases count what psycopg is asked to send.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from broker_contract_support import HandWorker, schema

from fuseline.broker import PostgresBroker
from fuseline.status import Status
from fuseline.storage import (
    PostgresStorage,
    StorageTransaction,
    StoredRun,
    StoredStep,
    StoredWorker,
)


class _RoundTrips:
    """What psycopg sends: each entry one round trip, a statement alone or a pipeline."""

    def __init__(self) -> None:
        self.trips: list[list[str]] = []
        self._batch: list[str] | None = None

    def heads(self) -> list[list[str]]:
        """Each round trip's statements, by their first word (``NOTIFY`` for a notification).

        The first broker process on a database notifies with a ``SELECT`` that
        sends it only when others listen (see ``_Presence``).
        """
        return [
            ["NOTIFY" if "pg_notify(" in text else text.split()[0] for text in trip]
            for trip in self.trips
        ]

    @contextlib.contextmanager
    def watching(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        execute, pipeline = psycopg.Cursor.execute, psycopg.Connection.pipeline

        def counted_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = " ".join(str(query).split())
            if self._batch is None:
                self.trips.append([text])
            else:
                self._batch.append(text)
            return execute(cursor, query, *args, **kwargs)

        @contextlib.contextmanager
        def counted_pipeline(connection: Any) -> Iterator[Any]:
            self._batch = []
            try:
                with pipeline(connection) as handle:
                    yield handle
            finally:
                self.trips.append(self._batch)
                self._batch = None

        monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
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


def _stored_run(storage: PostgresStorage, run_id: str) -> None:
    def body(t: StorageTransaction) -> None:
        assert t.add_run(StoredRun(run_id, "wf", "1", {}, Status.PENDING))
        t.add_steps([StoredStep(run_id, "a", "wf", "1", Status.PENDING, ready_at=t.now())])

    storage.atomic(body)


def test_a_new_run_brings_the_clock_back_with_its_insert(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> tuple[float, float]:
        run = StoredRun("r-clock", "wf", "1", {}, Status.PENDING)
        assert t.add_run(run)
        return run.created_at, t.now()  # the clock is not read again

    with sent.watching(monkeypatch):
        created_at, now = storage.atomic(body)
    assert sent.heads() == [["BEGIN", "INSERT"], ["COMMIT"]]
    assert created_at == now > 0


def test_locked_runs_and_their_steps_take_one_round_trip(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stored_run(storage, "r-both")
    sent = _RoundTrips()
    with sent.watching(monkeypatch):
        runs, steps = storage.atomic(lambda t: t.runs_with_steps(["r-both"], lock=True))
    assert sent.heads() == [["BEGIN", "SELECT", "SELECT"], ["COMMIT"]]
    assert list(runs) == ["r-both"] and [row.step_name for row in steps["r-both"]] == ["a"]


def test_steps_read_with_a_lock_include_what_the_lock_waited_for(postgres_url: str) -> None:
    # The steps' statement travels with the lock's, but the server starts it
    # (and takes its snapshot) only once the lock is held: a report waiting
    # for another report of the same run must see that report's step change.
    storage = PostgresStorage(postgres_url, max_connections=3)
    try:
        _stored_run(storage, "r-wait")
        locked, release = threading.Event(), threading.Event()

        def first(t: StorageTransaction) -> None:
            _, steps = t.runs_with_steps(["r-wait"], lock=True)
            t.update_step(dataclasses.replace(steps["r-wait"][0], status=Status.SUCCEEDED))
            t.flush()
            locked.set()
            assert release.wait(30)

        holder = threading.Thread(target=storage.atomic, args=(first,))
        holder.start()
        assert locked.wait(30)
        seen: list[Status] = []

        def second() -> None:
            _, steps = storage.atomic(lambda t: t.runs_with_steps(["r-wait"], lock=True))
            seen.extend(row.status for row in steps["r-wait"])

        waiter = threading.Thread(target=second)
        waiter.start()
        _wait_for_a_lock_wait(postgres_url)
        release.set()
        holder.join(30)
        waiter.join(30)
        assert seen == [Status.SUCCEEDED]
    finally:
        release.set()
        storage.close()


def _wait_for_a_lock_wait(postgres_url: str, timeout: float = 30.0) -> None:
    """Return once some session of this database waits for a row lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no session started waiting for the lock")


@pytest.mark.parametrize(
    ("written_first", "expected"),
    [
        # The claim is the whole transaction: sent alone, it is one.
        (False, [["WITH"]]),
        # Something came first: BEGIN went with it, COMMIT goes with the claim.
        (True, [["BEGIN", "UPDATE", "WITH", "COMMIT"]]),
    ],
    ids=["alone", "after-a-write"],
)
def test_a_last_claim_carries_the_commit(
    storage: PostgresStorage,
    monkeypatch: pytest.MonkeyPatch,
    written_first: bool,
    expected: list[list[str]],
) -> None:
    _stored_run(storage, "r-claim")
    storage.atomic(lambda t: t.add_worker(_worker("w-claim")))
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> list[StoredStep]:
        if written_first:
            t.touch_worker("w-claim", 4.0)
        steps, _ = t.claim_steps_with_runs(
            "w-claim", [("wf", "1")], 1, lambda: "token", start=True, last=True
        )
        # Committed: nothing may be written now.
        with pytest.raises(RuntimeError, match="committed with its last write"):
            t.touch_worker("w-claim", 5.0)
        return steps

    with sent.watching(monkeypatch):
        (step,) = storage.atomic(body)
    assert sent.heads() == expected
    assert step.worker_id == "w-claim"
    stored = storage.atomic(lambda t: t.runs_with_steps(["r-claim"]), write=False)
    assert stored[0]["r-claim"].status is Status.RUNNING
    assert [row.status for row in stored[1]["r-claim"]] == [Status.RUNNING]
    assert _seen_at(storage, "w-claim") == (4.0 if written_first else 1.0)


@pytest.fixture
def other_process(postgres_url: str) -> Iterator[PostgresStorage]:
    """The storage of another broker process, listening for notifications."""
    other = PostgresStorage(postgres_url, max_connections=1)
    try:
        assert other.listening.wait(10)
        yield other
    finally:
        other.close()


def test_work_left_after_a_last_claim_is_announced_after_the_commit(
    storage: PostgresStorage, other_process: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another broker process learns of the step this transaction queued and
    # did not claim, though the NOTIFY could only be decided after the COMMIT.
    since = other_process.work.generation
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> None:
        assert t.add_run(StoredRun("r-two", "wf", "1", {}, Status.PENDING))
        t.add_steps(
            [
                StoredStep("r-two", name, "wf", "1", Status.PENDING, ready_at=t.now())
                for name in ("a", "b")
            ]
        )
        t.claim_steps_with_runs("w-two", [("wf", "1")], 1, lambda: "token", last=True)

    with sent.watching(monkeypatch):
        storage.atomic(body)
    # (The two new steps go in one INSERT.)
    assert sent.heads()[-2:] == [["INSERT", "WITH", "COMMIT"], ["NOTIFY"]]
    assert other_process.work.wait(since, 10), "the other process was not told of the queued step"


def test_a_run_with_its_first_steps_is_one_round_trip_with_the_commit(
    storage: PostgresStorage, other_process: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dispatch that claims nothing: the run and its steps are one statement,
    # a transaction of its own, and the NOTIFY for the steps (another broker
    # process hears of them) follows it in the same round trip.
    since = other_process.work.generation
    sent = _RoundTrips()
    run = StoredRun("r-one", "wf", "1", {}, Status.PENDING)

    def body(t: StorageTransaction) -> bool:
        stored = t.add_run_with_steps(
            run, [StoredStep("r-one", "a", "wf", "1", Status.PENDING)], last=True
        )
        with pytest.raises(RuntimeError, match="committed with its last write"):
            t.touch_worker("w-one", 5.0)
        return stored

    with sent.watching(monkeypatch):
        assert storage.atomic(body)
    assert sent.heads() == [["WITH", "NOTIFY"]]
    assert other_process.work.wait(since, 10), "the other process was not told of the new step"
    (row,) = storage.atomic(lambda t: t.steps_of("r-one"), write=False)
    assert row.ready_at == run.created_at > 0


def test_a_run_with_its_first_steps_leaves_room_for_a_claim(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dispatch that serves a waiting worker: the claim carries COMMIT, and
    # no NOTIFY goes out for the step it took.
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> list[StoredStep]:
        assert t.add_run_with_steps(
            StoredRun("r-wait", "wf", "1", {}, Status.PENDING),
            [StoredStep("r-wait", "a", "wf", "1", Status.PENDING)],
        )
        return t.claim_steps_with_runs(
            "w-wait", [("wf", "1")], 1, lambda: "token", start=True, last=True
        )[0]

    with sent.watching(monkeypatch):
        (claimed,) = storage.atomic(body)
    assert sent.heads() == [["BEGIN", "WITH"], ["WITH", "COMMIT"]]
    assert claimed.run_id == "r-wait" and claimed.worker_id == "w-wait"


def _stored_later_then_claimed(
    run: StoredRun, worker_id: str
) -> Callable[[StorageTransaction], tuple[bool, list[StoredStep]]]:
    """A dispatch's body for a waiting worker: the run held, a claim, then the answer."""

    def body(t: StorageTransaction) -> tuple[bool, list[StoredStep]]:
        stored = t.add_run_with_steps_later(
            run, [StoredStep(run.run_id, "a", "wf", "1", Status.PENDING)]
        )
        claimed, _ = t.claim_steps_with_runs(
            worker_id, [("wf", "1")], 1, lambda: "token", start=True, last=True
        )
        return stored(), claimed

    return body


def test_a_run_held_for_a_claim_goes_out_with_it_and_shares_its_clock(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dispatch that serves a waiting worker without asking whether the run
    # was stored first: the run's insert, the claim and COMMIT are one round
    # trip, and the claim leases with the clock the insert read.
    sent = _RoundTrips()
    run = StoredRun("r-held", "wf", "1", {}, Status.PENDING)
    with sent.watching(monkeypatch):
        stored, (claimed,) = storage.atomic(_stored_later_then_claimed(run, "w-held"))
    assert sent.heads() == [["BEGIN", "WITH", "WITH", "COMMIT"]]
    assert stored and claimed.run_id == "r-held" and claimed.worker_id == "w-held"
    assert claimed.started_at == claimed.ready_at == run.created_at > 0
    found = storage.atomic(lambda t: t.get_run("r-held"), write=False)
    assert found is not None and found.status is Status.RUNNING


def test_a_held_run_refused_for_its_key_leaves_the_claim_what_else_is_ready(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = StoredRun("r-key", "wf", "1", {}, Status.PENDING, idempotency_key="k")
    assert storage.atomic(
        lambda t: t.add_run_with_steps(first, [StoredStep("r-key", "a", "wf", "1", Status.PENDING)])
    )
    repeat = StoredRun("r-repeat", "wf", "1", {}, Status.PENDING, idempotency_key="k")
    stored, (claimed,) = storage.atomic(_stored_later_then_claimed(repeat, "w-key"))
    assert not stored
    assert claimed.run_id == "r-key" and claimed.worker_id == "w-key"
    assert storage.atomic(lambda t: t.get_run("r-repeat"), write=False) is None
    assert storage.atomic(lambda t: t.steps_of("r-repeat"), write=False) == []


def test_asking_for_the_clock_sends_a_held_run_and_takes_its_time(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _RoundTrips()
    run = StoredRun("r-clock", "wf", "1", {}, Status.PENDING)

    def body(t: StorageTransaction) -> tuple[float, bool]:
        stored = t.add_run_with_steps_later(
            run, [StoredStep("r-clock", "a", "wf", "1", Status.PENDING)]
        )
        now = t.now()
        t.touch_worker("w-clock", now)
        return now, stored()

    with sent.watching(monkeypatch):
        now, stored = storage.atomic(body)
    assert stored and now == run.created_at > 0
    # (The NOTIFY is for the step left ready.)
    assert sent.heads() == [["BEGIN", "WITH"], ["UPDATE", "NOTIFY", "COMMIT"]]


def _steps(storage: PostgresStorage, run_id: str) -> dict[str, StoredStep]:
    rows = storage.atomic(lambda t: t.steps_of(run_id), write=False)
    return {row.step_name: row for row in rows}


def test_rows_written_between_statements_go_out_as_one_statement_per_kind(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for run_id in ("r-1", "r-2", "r-3"):
        _stored_run(storage, run_id)  # with its step a
    sent = _RoundTrips()

    def body(t: StorageTransaction) -> None:
        # What a batch of three reports writes: each finishes its run's
        # step, inserts a successor and updates its run.
        runs = t.runs_by_id(["r-1", "r-2", "r-3"], lock=True)
        for run_id, run in runs.items():
            step = StoredStep(run_id, "a", "wf", "1", Status.SUCCEEDED, attempt=1)
            step.result, step.finished_at = {"from": run_id}, t.now()
            t.update_step(step)
            t.add_steps([StoredStep(run_id, "b", "wf", "1", Status.PENDING, ready_at=t.now())])
            run.status, run.finished_steps = Status.RUNNING, 1
            t.update_run(run)

    with sent.watching(monkeypatch):
        storage.atomic(body)
    # Nine rows, three statements (and the NOTIFY for the queued steps).
    assert sent.heads()[-1] == ["INSERT", "UPDATE", "UPDATE", "NOTIFY", "COMMIT"]
    for run_id in ("r-1", "r-2", "r-3"):
        steps = _steps(storage, run_id)
        assert steps["a"].status is Status.SUCCEEDED
        assert steps["a"].result == {"from": run_id}
        assert steps["b"].status is Status.PENDING
        run = storage.atomic(lambda t, run_id=run_id: t.get_run(run_id), write=False)
        assert run is not None and (run.status, run.finished_steps) == (Status.RUNNING, 1)


# Values that must come back exactly as written, whatever way a row is sent.
_AWKWARD_RESULT = {"text": 'quote " backslash \\ tab\t é ✓ 😀', "n": -7, "x": 0.1 + 0.2}
_AWKWARD_TIME = 1_765_000_000.123_456_7


def _statements_and_params(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each statement psycopg is asked to run, with how many parameters it carries."""
    seen: list[tuple[str, int]] = []
    execute = psycopg.Cursor.execute

    def noted(cursor: Any, query: Any, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append((str(query).split()[0], len(params or ())))
        return execute(cursor, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", noted)
    return seen


def test_a_batch_sends_one_parameter_per_row_and_every_value_comes_back_exact(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg converts a statement of more than 50 parameters from its text on
    # every call; a batch of nine reports used to send 9 x 19 of them.
    run_ids = [f"r-batch-{n}" for n in range(9)]
    for run_id in run_ids:
        _stored_run(storage, run_id)
    sent = _statements_and_params(monkeypatch)

    def body(t: StorageTransaction) -> None:
        for run_id, run in t.runs_by_id(run_ids, lock=True).items():
            step = StoredStep(run_id, "a", "wf", "1", Status.SUCCEEDED, attempt=2)
            step.result, step.finished_at, step.lease_seconds = _AWKWARD_RESULT, _AWKWARD_TIME, 7.25
            step.or_winners, step.worker_id = {"p": "é"}, None
            t.update_step(step)
            t.add_steps(
                [StoredStep(run_id, "b", "wf", "1", Status.PENDING, ready_at=_AWKWARD_TIME)]
            )
            run.status, run.finished_steps, run.result = Status.RUNNING, 1, _AWKWARD_RESULT
            t.update_run(run)

    storage.atomic(body)
    writes = [(head, count) for head, count in sent if head in ("INSERT", "UPDATE")]
    assert writes == [("INSERT", 9), ("UPDATE", 9), ("UPDATE", 9)]
    for run_id in run_ids:
        steps = _steps(storage, run_id)
        a, b = steps["a"], steps["b"]
        assert (a.status, a.attempt, a.result, a.finished_at) == (
            Status.SUCCEEDED,
            2,
            _AWKWARD_RESULT,
            _AWKWARD_TIME,
        )
        assert (a.lease_seconds, a.or_winners, a.worker_id, a.deadline) == (
            7.25,
            {"p": "é"},
            None,
            None,
        )
        assert (b.status, b.ready_at, b.attempt) == (Status.PENDING, _AWKWARD_TIME, 0)
        run = storage.atomic(lambda t, run_id=run_id: t.get_run(run_id), write=False)
        assert run is not None
        assert (run.status, run.finished_steps, run.result) == (Status.RUNNING, 1, _AWKWARD_RESULT)


def test_a_run_with_several_first_steps_sends_one_parameter_per_step(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"root-{n}" for n in range(6)]
    run = StoredRun("r-roots", "wf", "1", {"n": "é"}, Status.PENDING)
    first = [
        StoredStep("r-roots", name, "wf", "1", Status.PENDING, lease_seconds=9.5) for name in names
    ]
    sent = _statements_and_params(monkeypatch)
    assert storage.atomic(lambda t: t.add_run_with_steps(run, first, last=True))
    (count,) = [count for head, count in sent if head == "WITH"]
    assert count <= 20, f"the run and its {len(names)} steps took {count} parameters"
    steps = _steps(storage, "r-roots")
    assert sorted(steps) == names
    assert {(s.status, s.lease_seconds, s.ready_at) for s in steps.values()} == {
        (Status.PENDING, 9.5, run.created_at)
    }


def test_a_row_written_twice_before_it_goes_out_keeps_its_last_values(
    storage: PostgresStorage,
) -> None:
    _stored_run(storage, "r-twice")

    def body(t: StorageTransaction) -> None:
        step = StoredStep("r-twice", "x", "wf", "1", Status.PENDING, ready_at=t.now())
        t.add_steps([step])
        step.status, step.attempt, step.worker_id = Status.RUNNING, 1, "w-1"
        t.update_step(step)  # folded into the insert
        other = StoredStep("r-twice", "y", "wf", "1", Status.PENDING, ready_at=t.now())
        t.add_steps([other])
        t.flush()
        other.status = Status.SKIPPED
        t.update_step(other)
        other.status = Status.CANCELLED
        t.update_step(other)  # the last write of the row wins

    storage.atomic(body)
    steps = _steps(storage, "r-twice")
    assert (steps["x"].status, steps["x"].attempt, steps["x"].worker_id) == (
        Status.RUNNING,
        1,
        "w-1",
    )
    assert steps["y"].status is Status.CANCELLED


def test_a_second_row_for_a_step_is_still_refused(storage: PostgresStorage) -> None:
    _stored_run(storage, "r-dup")

    def body(t: StorageTransaction) -> None:
        t.add_steps([StoredStep("r-dup", "z", "wf", "1", Status.PENDING, ready_at=t.now())])
        t.add_steps([StoredStep("r-dup", "z", "wf", "1", Status.PENDING, ready_at=t.now())])

    with pytest.raises(psycopg.errors.UniqueViolation):
        storage.atomic(body)
    assert set(_steps(storage, "r-dup")) == {"a"}


def test_claims_take_the_queue_in_index_order_however_stale_the_statistics(
    storage: PostgresStorage, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Statistics taken while nothing was queued, then a burst of dispatches:
    # the planner believes the queue is nearly empty.
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("ANALYZE fuseline_steps")

    def burst(t: StorageTransaction) -> None:
        assert t.add_run(StoredRun("r-burst", "wf", "1", {}, Status.PENDING))
        t.add_steps(
            [
                StoredStep("r-burst", f"s{n}", "wf", "1", Status.PENDING, ready_at=float(n))
                for n in range(2000)
            ]
        )

    storage.atomic(burst)
    claims: list[tuple[str, Any]] = []
    execute = psycopg.Cursor.execute

    def noting_execute(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if str(query).startswith("WITH clock"):
            claims.append((str(query), params))
        return execute(cursor, query, params, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", noting_execute)
        (claimed,), _ = storage.atomic(
            lambda t: t.claim_steps_with_runs("w-1", [("wf", "1")], 1, lambda: "tok", last=True)
        )
    assert claimed.step_name == "s0"
    ((statement, params),) = claims
    with storage._pool.connection() as connection:  # the pool's own session settings
        plan = "\n".join(row[0] for row in connection.execute("EXPLAIN " + statement, params))
    # The oldest steps come straight from the queue's index; no scan collects
    # every queued step to sort them.
    assert "Index Scan using fuseline_steps_queue" in plan, plan
    assert "Bitmap" not in plan, plan


def test_giving_back_requeues_in_one_statement_the_steps_still_held_by_the_claim(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def queued(t: StorageTransaction) -> None:
        assert t.add_run(StoredRun("r-back", "wf", "1", {}, Status.PENDING))
        t.add_steps(
            [
                StoredStep("r-back", name, "wf", "1", Status.PENDING, ready_at=t.now())
                for name in ("a", "b", "c")
            ]
        )

    storage.atomic(queued)
    tokens = iter(["t-a", "t-b", "t-c"])
    claimed, _ = storage.atomic(
        lambda t: t.claim_steps_with_runs(
            "w-back", [("wf", "1")], 3, lambda: next(tokens), last=True
        )
    )
    assert len(claimed) == 3
    # One of them went to another worker meanwhile (its lease ran out).
    moved = next(step for step in claimed if step.step_name == "b")
    other = {"worker_id": "w-other", "lease_token": "t-other"}
    elsewhere = dataclasses.replace(moved, **other)
    storage.atomic(lambda t: t.update_step(elsewhere))

    sent = _RoundTrips()
    with sent.watching(monkeypatch):
        given = storage.atomic(lambda t: t.give_back(claimed))  # type: ignore[attr-defined]
    assert given == 2
    assert sent.heads() == [["BEGIN", "UPDATE"], ["NOTIFY", "COMMIT"]]
    rows = _steps(storage, "r-back")
    for name in ("a", "c"):
        row = rows[name]
        assert (row.status, row.attempt, row.worker_id, row.lease_token, row.started_at) == (
            Status.PENDING,
            0,
            None,
            None,
            None,
        )
    assert (rows["b"].status, rows["b"].lease_token) == (Status.RUNNING, "t-other")


def test_a_heartbeat_reads_in_one_round_trip_and_extends_with_the_commit(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = PostgresBroker(postgres_url, sweep_interval=0)
    try:
        single = schema("heartbeat-trips", steps=["a"])
        worker = HandWorker(broker, [single])
        run_ids = [broker.dispatch_workflow(single, {"n": n}) for n in range(3)]
        held = {a.instance_id: a for a in worker.claim_all()}
        assert set(held) == set(run_ids)
        broker.cancel_run(run_ids[0])
        before = {
            step.run_id: step.deadline
            for step in broker.storage.atomic(
                lambda t: t.leases_of(worker.worker_id)[0], write=False
            )
        }
        sent = _RoundTrips()
        with sent.watching(monkeypatch):
            reply = broker.keep_alive(worker.worker_id)
        # The clock with the leases and their runs' cancellations; then the
        # worker noted as seen, the leases extended and COMMIT.
        assert sent.heads() == [["BEGIN", "SELECT", "SELECT"], ["UPDATE", "UPDATE", "COMMIT"]]
        assert {ref.instance_id for ref in reply.cancelled} == {run_ids[0]}
        assert {ref.instance_id for ref in reply.extended} == set(run_ids[1:])
        assert reply.lost == []
        after = {
            step.run_id: step.deadline
            for step in broker.storage.atomic(
                lambda t: t.leases_of(worker.worker_id)[0], write=False
            )
        }
        assert after[run_ids[0]] == before[run_ids[0]]  # a cancelled run's lease stays
        for run_id in run_ids[1:]:
            assert after[run_id] is not None and before[run_id] is not None
            assert after[run_id] > before[run_id]
    finally:
        broker.close()
