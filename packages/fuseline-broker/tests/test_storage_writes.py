"""Writes inside one transaction: later reads see them, a failure undoes them all.

PostgreSQL holds back the writes whose results nothing reads and sends them
together just before the next read or the commit; these cases pin down that
doing so changes nothing a caller can see, on every backend.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import psycopg
import pytest
from broker_contract_support import HandWorker, schema

from fuseline.broker import StorageBroker
from fuseline.status import Status
from fuseline.storage import StorageTransaction, StoredRun, StoredStep


def _queued_run(broker: StorageBroker) -> str:
    chain = schema("writes-chain", [("a", "b")])
    HandWorker(broker, [chain])
    return broker.dispatch_workflow(chain, {"n": 1})


def test_a_read_after_a_write_in_the_same_transaction_sees_it(broker: StorageBroker) -> None:
    run_id = _queued_run(broker)

    def body(t: StorageTransaction) -> tuple[Status, Status, int]:
        (row,) = t.steps_of(run_id)
        t.update_step(dataclasses.replace(row, status=Status.SKIPPED))
        run = t.get_run(run_id)
        assert run is not None
        t.update_run(dataclasses.replace(run, finished_steps=7))
        (seen,) = t.steps_of(run_id)
        again = t.get_run(run_id)
        assert again is not None
        return row.status, seen.status, again.finished_steps

    before, during, finished_steps = broker.storage.atomic(body)
    assert before is Status.PENDING
    assert during is Status.SKIPPED
    assert finished_steps == 7
    (after,) = broker.storage.atomic(lambda t: t.steps_of(run_id), write=False)
    assert after.status is Status.SKIPPED


def test_a_write_that_fails_at_the_end_undoes_the_whole_transaction(
    broker: StorageBroker,
) -> None:
    run_id = _queued_run(broker)

    def body(t: StorageTransaction) -> None:
        (row,) = t.steps_of(run_id)
        t.update_step(dataclasses.replace(row, status=Status.SKIPPED))
        # A second row for the same step: the last write of the transaction,
        # and one the storage must refuse.
        t.add_steps([row])

    with pytest.raises((ValueError, sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        broker.storage.atomic(body)
    (after,) = broker.storage.atomic(lambda t: t.steps_of(run_id), write=False)
    assert after.status is Status.PENDING


def test_a_write_refused_before_a_read_fails_with_its_own_error(broker: StorageBroker) -> None:
    # PostgreSQL sends held writes in the same round trip as the read that
    # follows them: the refusal of the write must surface, not the read's.
    run_id = _queued_run(broker)
    reached_after_read = False

    def body(t: StorageTransaction) -> None:
        nonlocal reached_after_read
        (row,) = t.steps_of(run_id)
        t.update_step(dataclasses.replace(row, status=Status.SKIPPED))
        t.add_steps([row])  # refused: the step exists
        t.get_run(run_id)
        reached_after_read = True

    with pytest.raises((ValueError, sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        broker.storage.atomic(body)
    assert not reached_after_read
    (after,) = broker.storage.atomic(lambda t: t.steps_of(run_id), write=False)
    assert after.status is Status.PENDING


def test_extending_several_leases_moves_only_those_still_held(broker: StorageBroker) -> None:
    # PostgreSQL extends them in one statement; every backend must agree on
    # which leases moved when one was handed on meanwhile.
    single = schema("writes-leases", steps=["a"])
    worker = HandWorker(broker, [single])
    for n in range(3):
        broker.dispatch_workflow(single, {"n": n})
    assert len(worker.claim_all()) == 3

    def body(t: StorageTransaction) -> tuple[set[tuple[str, str]], list[str]]:
        rows = sorted(t.leases_of(worker.worker_id)[0], key=lambda row: row.run_id)
        # As if its lease had been handed on: it now holds another token.
        stale = dataclasses.replace(rows[0], lease_token=rows[1].lease_token)
        far = t.now() + 3600
        moved = t.extend_leases([(stale, far), (rows[1], far), (rows[2], far)])
        return moved, [row.run_id for row in rows]

    moved, run_ids = broker.storage.atomic(body)
    assert moved == {(run_ids[1], "a"), (run_ids[2], "a")}
    deadlines = broker.storage.atomic(
        lambda t: {row.run_id: row.deadline for row in t.leases_of(worker.worker_id)[0]},
        write=False,
    )
    assert deadlines[run_ids[0]] is not None and deadlines[run_ids[1]] is not None
    assert deadlines[run_ids[0]] < deadlines[run_ids[1]] == deadlines[run_ids[2]]


def test_runs_with_steps_reads_both_after_the_writes_held_before_them(
    broker: StorageBroker,
) -> None:
    # PostgreSQL sends both reads in one round trip, behind the held writes.
    run_id = _queued_run(broker)

    def body(t: StorageTransaction) -> tuple[dict[str, StoredRun], dict[str, list[StoredStep]]]:
        (row,) = t.steps_of(run_id)
        t.update_step(dataclasses.replace(row, status=Status.SKIPPED))
        return t.runs_with_steps([run_id, "no-such-run"], lock=True)

    runs, steps = broker.storage.atomic(body)
    assert list(runs) == [run_id] and list(steps) == [run_id]
    assert runs[run_id].workflow_id == "writes-chain"
    assert [(row.step_name, row.status) for row in steps[run_id]] == [("a", Status.SKIPPED)]


def test_a_new_run_is_stamped_with_the_transaction_clock(broker: StorageBroker) -> None:
    # PostgreSQL reads its clock with the insert instead of before it.
    chain = schema("writes-stamp", [("a", "b")])
    HandWorker(broker, [chain])
    before = time.time()

    def body(t: StorageTransaction) -> tuple[StoredRun, float]:
        run = StoredRun("r-stamped", "writes-stamp", "1", {}, Status.PENDING)
        assert t.add_run(run)
        return run, t.now()

    run, now = broker.storage.atomic(body)
    assert run.created_at == now
    assert before - 5 < now < time.time() + 5  # the server's clock, on this machine
    stored = broker.storage.atomic(lambda t: t.get_run("r-stamped"), write=False)
    assert stored is not None and stored.created_at == now and stored.seq == run.seq > 0


def test_an_undone_prune_leaves_the_runs_listed_newest_first(broker: StorageBroker) -> None:
    # The memory backend lists runs by walking them in the order they were
    # added; putting pruned runs back must not move them to the end.
    single = schema("writes-prune", steps=["a"])
    worker = HandWorker(broker, [single])
    first = broker.dispatch_workflow(single, {"n": 0})
    worker.drive()
    later = [broker.dispatch_workflow(single, {"n": n}) for n in (1, 2)]

    def body(t: StorageTransaction) -> None:
        assert t.delete_finished_runs(time.time() + 3600, 10) == 1
        raise RuntimeError("undo the prune")

    with pytest.raises(RuntimeError, match="undo the prune"):
        broker.storage.atomic(body)
    assert [run.run_id for run in broker.list_runs().items] == [*reversed(later), first]
    assert [run.run_id for run in broker.list_runs(limit=1).items] == [later[1]]


@pytest.mark.parametrize("last", [False, True], ids=["more-to-come", "last"])
def test_a_run_and_its_first_steps_are_stored_together_or_not_at_all(
    broker: StorageBroker, last: bool
) -> None:
    def first_steps(run_id: str) -> list[StoredStep]:
        return [
            StoredStep(run_id, "a", "wf", "1", Status.PENDING),
            StoredStep(run_id, "b", "wf", "1", Status.SKIPPED),
        ]

    def dispatch(run_id: str) -> tuple[bool, StoredRun]:
        run = StoredRun(run_id, "wf", "1", {}, Status.PENDING, idempotency_key="same")
        stored = broker.storage.atomic(
            lambda t: t.add_run_with_steps(run, first_steps(run_id), last=last)
        )
        return stored, run

    stored, run = dispatch("r-first")
    assert stored and run.created_at > 0
    rows = {row.step_name: row for row in broker.storage.atomic(lambda t: t.steps_of("r-first"))}
    # The steps' times are the run's: they were created with it.
    assert rows["a"].status is Status.PENDING
    assert rows["a"].ready_at == run.created_at and rows["a"].finished_at is None
    assert rows["b"].status is Status.SKIPPED
    assert rows["b"].ready_at == rows["b"].finished_at == run.created_at

    # The key is taken: neither the run nor its steps are stored.
    stored, _ = dispatch("r-second")
    assert not stored
    assert broker.storage.atomic(lambda t: t.get_run("r-second")) is None
    assert broker.storage.atomic(lambda t: t.steps_of("r-second")) == []
