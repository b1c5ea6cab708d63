"""The broker contract: what every built-in broker does, on every storage backend.

Each test runs against the memory, SQLite and PostgreSQL backends (the last
one through the ``postgres_url`` fixture: ``FUSELINE_TEST_DATABASE_URL`` or a
private throwaway cluster, and a fresh database for each test).
Steps are driven by hand with ``get_step`` / ``report_step`` so that a test
decides the order in which things happen. Leases are made short so that they
run out during the test, and every wait polls a condition until a deadline.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from broker_contract_support import (
    Backend,
    Fail,
    HandWorker,
    schema,
    snapshot,
    statuses,
    wait_until,
)

import fuseline.broker
import fuseline.messages
from fuseline import Step, Workflow
from fuseline.broker import Broker, StorageBroker
from fuseline.errors import (
    BrokerUnavailableError,
    CycleError,
    DuplicateStepNameError,
    IdempotencyConflictError,
    InvalidInputError,
    LeaseConflictError,
    PayloadTooLargeError,
    ResultNotSerializableError,
    RunFinishedError,
    RunNotFoundError,
    SchemaConflictError,
    StepNotFoundError,
    UnknownStepError,
    WaitTimeoutError,
    WorkerNotFoundError,
    WorkflowDefinitionError,
)
from fuseline.messages import StepAssignment, StepReport
from fuseline.policies import RetryPolicy, StepTimeoutPolicy
from fuseline.status import Status
from fuseline.storage import MemoryStorage, RuntimeStorage
from fuseline.workflow import WorkflowSchema

S = Status


# -- execution rules, end to end -----------------------------------------------------------


def test_chain_runs_step_by_step_and_passes_results(broker: StorageBroker) -> None:
    chain = schema("chain", [("a", "b"), ("b", "c")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain, {"n": 3})

    fresh = broker.get_run(run_id)
    assert (fresh.status, fresh.workflow_id, fresh.workflow_version) == (S.PENDING, "chain", "1")
    assert fresh.inputs == {"n": 3} and fresh.result is None and fresh.finished_at is None
    assert {n: (s.status, s.attempts) for n, s in fresh.steps.items()} == {
        "a": (S.PENDING, 0),
        "b": (S.PENDING, 0),
        "c": (S.PENDING, 0),
    }

    a = worker.claim()
    assert a is not None and a.step_name == "a" and a.instance_id == run_id
    assert a.attempt == 1 and a.lease_token and a.deadline is not None
    assert a.workflow_inputs == {"n": 3} and a.results == {}
    assert worker.claim() is None, "b must wait for a"
    running = broker.get_run(run_id)
    assert running.status is S.RUNNING, "the first hand-out starts the run"
    assert [r.run_id for r in broker.list_runs(status=S.RUNNING).items] == [run_id]
    assert running.steps["a"].status is S.RUNNING
    assert running.steps["a"].worker_id == worker.worker_id
    assert running.steps["a"].attempts == 1 and running.steps["a"].started_at is not None

    worker.succeed(a, 6)
    b = worker.claim()
    assert b is not None and b.step_name == "b" and b.results == {"a": 6}
    assert b.lease_token != a.lease_token
    worker.succeed(b, 12)
    c = worker.claim()
    assert c is not None and c.step_name == "c" and c.results == {"b": 12}
    assert c.workflow_inputs == {"n": 3}
    worker.succeed(c, 24)

    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED and done.result == {"c": 24}
    assert done.finished_at is not None
    assert {n: (s.status, s.result, s.attempts) for n, s in done.steps.items()} == {
        "a": (S.SUCCEEDED, 6, 1),
        "b": (S.SUCCEEDED, 12, 1),
        "c": (S.SUCCEEDED, 24, 1),
    }
    assert broker.wait_for_run(run_id, timeout=5) == done
    assert worker.claim() is None


def test_fan_out_makes_every_successor_ready_at_once(broker: StorageBroker) -> None:
    fan = schema("fan", [("a", "b"), ("a", "c"), ("a", "d")])
    worker = HandWorker(broker, [fan])
    run_id = broker.dispatch_workflow(fan)
    worker.succeed(worker.claim_named()["a"], {"seed": [1, 2]})

    batch = broker.get_steps(worker.worker_id, max_steps=10)
    assert sorted(a.step_name for a in batch) == ["b", "c", "d"]
    assert all(a.results == {"a": {"seed": [1, 2]}} for a in batch)
    assert len({a.lease_token for a in batch}) == 3
    for assignment in batch:
        worker.succeed(assignment, assignment.step_name.upper())
    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED and done.result == {"b": "B", "c": "C", "d": "D"}


def test_and_join_waits_for_every_parent(broker: StorageBroker) -> None:
    join = schema("and-join", [("a", "j"), ("b", "j"), ("c", "j")])
    worker = HandWorker(broker, [join])
    run_id = broker.dispatch_workflow(join)
    roots = worker.claim_named()
    assert sorted(roots) == ["a", "b", "c"]

    worker.succeed(roots["b"], 2)
    worker.succeed(roots["a"], 1)
    assert worker.claim() is None
    assert statuses(broker, run_id)["j"] is S.PENDING
    worker.succeed(roots["c"], 3)
    j = worker.claim()
    assert j is not None and j.step_name == "j"
    assert j.results == {"a": 1, "b": 2, "c": 3}
    worker.succeed(j, 6)
    assert worker.claim() is None
    assert broker.get_run(run_id).result == {"j": 6}


@pytest.mark.parametrize("winner", ["a", "b"])
def test_or_join_runs_once_with_the_first_member_to_succeed(
    broker: StorageBroker, winner: str
) -> None:
    either = schema("or-join", [("j", "out")], or_groups=[("j", "first", ["a", "b"])])
    worker = HandWorker(broker, [either])
    run_id = broker.dispatch_workflow(either)
    members = worker.claim_named()
    loser = "b" if winner == "a" else "a"

    worker.succeed(members[winner], f"from {winner}")
    j = worker.claim()
    assert j is not None and j.step_name == "j"
    assert j.results == {winner: f"from {winner}"}
    worker.succeed(members[loser], f"from {loser}")
    assert worker.claim() is None, "the OR join must not be enqueued a second time"
    worker.succeed(j, j.results[winner])
    out = worker.claim()
    assert out is not None and out.results == {"j": f"from {winner}"}
    worker.succeed(out, "done")

    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED and done.result == {"out": "done"}
    assert done.steps["j"].attempts == 1
    assert done.steps[loser].status is S.SUCCEEDED


def test_or_join_waits_past_a_failed_member(broker: StorageBroker) -> None:
    either = schema("or-fail", or_groups=[("j", "first", ["a", "b"])])
    worker = HandWorker(broker, [either])
    run_id = broker.dispatch_workflow(either)
    members = worker.claim_named()

    worker.fail(members["a"])
    assert worker.claim() is None
    assert statuses(broker, run_id)["j"] is S.PENDING
    worker.succeed(members["b"], "b")
    j = worker.claim()
    assert j is not None and j.results == {"b": "b"}
    worker.succeed(j, "j")
    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED, "a failed member that is not an output fails nothing"
    assert done.steps["a"].status is S.FAILED and done.result == {"j": "j"}


def test_or_join_is_cancelled_when_every_member_fails(broker: StorageBroker) -> None:
    either = schema("or-all-fail", [("j", "after")], or_groups=[("j", "first", ["a", "b"])])
    worker = HandWorker(broker, [either])
    run_id = broker.dispatch_workflow(either)
    handled = worker.drive({"a": Fail(), "b": Fail()})
    assert sorted(a.step_name for a in handled) == ["a", "b"]
    done = broker.get_run(run_id)
    assert done.status is S.FAILED
    assert statuses(broker, run_id) == {
        "a": S.FAILED,
        "b": S.FAILED,
        "j": S.CANCELLED,
        "after": S.CANCELLED,
    }
    assert done.result == {"after": None}


def test_branching_takes_the_chosen_label_and_skips_the_rest(broker: StorageBroker) -> None:
    branchy = schema(
        "branch",
        [
            ("r", "left", "go-left"),
            ("r", "right", "go-right"),
            ("r", "plain"),
            ("left", "left2"),
            ("right", "right2"),
            ("left2", "end"),
            ("right2", "end"),
        ],
    )
    worker = HandWorker(broker, [branchy])

    to_left = broker.dispatch_workflow(branchy)
    handled = worker.drive({"r": "go-left", "end": lambda a: a.results})
    assert [a.step_name for a in handled] == ["r", "left", "left2", "end"]
    assert handled[-1].results == {"left2": "left2"}, "a skipped parent binds nothing"
    done = broker.get_run(to_left)
    assert done.status is S.SUCCEEDED
    assert statuses(broker, to_left) == {
        "r": S.SUCCEEDED,
        "left": S.SUCCEEDED,
        "right": S.SKIPPED,
        "plain": S.SKIPPED,
        "left2": S.SUCCEEDED,
        "right2": S.SKIPPED,
        "end": S.SUCCEEDED,
    }
    assert done.result == {"plain": None, "end": {"left2": "left2"}}

    # A result that is no label takes the default edges only; the skips cascade.
    by_default = broker.dispatch_workflow(branchy)
    handled = worker.drive({"r": "go-nowhere"})
    assert [a.step_name for a in handled] == ["r", "plain"]
    assert statuses(broker, by_default) == {
        "r": S.SUCCEEDED,
        "left": S.SKIPPED,
        "right": S.SKIPPED,
        "plain": S.SUCCEEDED,
        "left2": S.SKIPPED,
        "right2": S.SKIPPED,
        "end": S.SKIPPED,
    }
    done = broker.get_run(by_default)
    assert done.status is S.SUCCEEDED and done.result == {"plain": "plain", "end": None}


def test_a_step_the_worker_skips_skips_what_follows(broker: StorageBroker) -> None:
    chain = schema("skipped", [("a", "b"), ("b", "c")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    a = worker.claim()
    assert a is not None
    worker.report(a, S.SKIPPED)  # e.g. its condition was false
    assert worker.claim() is None
    assert statuses(broker, run_id) == {"a": S.SKIPPED, "b": S.SKIPPED, "c": S.SKIPPED}
    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED and done.result == {"c": None}


def test_failure_cancels_what_cannot_run_any_more(broker: StorageBroker) -> None:
    failing = schema("failing", [("a", "b"), ("b", "c"), ("x", "c"), ("a", "d")])
    worker = HandWorker(broker, [failing])
    run_id = broker.dispatch_workflow(failing)
    roots = worker.claim_named()
    assert sorted(roots) == ["a", "x"]

    worker.fail(roots["a"], "no luck")
    assert statuses(broker, run_id) == {
        "a": S.FAILED,
        "b": S.CANCELLED,
        "c": S.CANCELLED,
        "x": S.RUNNING,
        "d": S.CANCELLED,
    }
    assert broker.get_run(run_id).status is S.RUNNING
    worker.succeed(roots["x"], "x")
    assert worker.claim() is None
    done = broker.get_run(run_id)
    assert done.status is S.FAILED and done.result == {"c": None, "d": None}
    error = done.steps["a"].error
    assert error is not None and (error.type, error.message) == ("RuntimeError", "no luck")

    # A failure reported without details still records that it failed.
    bare = broker.dispatch_workflow(failing)
    for assignment in worker.claim_all():
        worker.report(assignment, S.FAILED)
    failed = broker.get_run(bare)
    assert failed.status is S.FAILED
    assert failed.steps["a"].error is not None and failed.steps["x"].error is not None


def test_each_run_keeps_its_own_inputs_and_results(broker: StorageBroker) -> None:
    pair = schema("per-run", [("a", "b")])
    worker = HandWorker(broker, [pair])
    runs = {broker.dispatch_workflow(pair, {"n": n}): n for n in (1, 2, 3)}

    roots = broker.get_steps(worker.worker_id, max_steps=10)
    assert sorted(runs[a.instance_id] for a in roots) == [1, 2, 3]
    for a in reversed(roots):
        assert a.workflow_inputs == {"n": runs[a.instance_id]}
        worker.succeed(a, a.workflow_inputs["n"] * 10)
    seconds = broker.get_steps(worker.worker_id, max_steps=10)
    assert len(seconds) == 3
    for b in seconds:
        n = runs[b.instance_id]
        assert b.workflow_inputs == {"n": n} and b.results == {"a": n * 10}
        worker.succeed(b, n * 100)
    for run_id, n in runs.items():
        done = broker.get_run(run_id)
        assert (done.status, done.inputs, done.result) == (S.SUCCEEDED, {"n": n}, {"b": n * 100})


def test_report_can_claim_the_workers_next_step(broker: StorageBroker) -> None:
    chain = schema("claim-next", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    a = worker.claim()
    assert a is not None
    b = worker.report(a, S.SUCCEEDED, 1, claim_next=True)
    assert b is not None and b.step_name == "b" and b.results == {"a": 1}
    assert worker.report(b, S.SUCCEEDED, 2, claim_next=True) is None
    assert broker.get_run(run_id).result == {"b": 2}


# -- waiting ---------------------------------------------------------------------------------


def test_waiting_claims_and_waiting_for_runs(broker: StorageBroker) -> None:
    single = schema("waits", steps=["only"])
    worker = HandWorker(broker, [single])
    assert worker.claim(wait=0.05) is None

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(worker.claim, 10.0)
        run_id = broker.dispatch_workflow(single)
        assignment = waiting.result(timeout=15)
    assert assignment is not None and assignment.instance_id == run_id

    with pytest.raises(WaitTimeoutError):
        broker.wait_for_run(run_id, timeout=0.05)
    with ThreadPoolExecutor(1) as pool:
        waiting_run = pool.submit(broker.wait_for_run, run_id, 10.0)
        worker.succeed(assignment, "ok")
        done = waiting_run.result(timeout=15)
    assert done.status is S.SUCCEEDED and done.result == {"only": "ok"}


# -- concurrency -----------------------------------------------------------------------------


def test_racing_claims_never_hand_out_a_step_twice(broker: StorageBroker) -> None:
    single = schema("race", steps=["only"])
    runs = {broker.dispatch_workflow(single, {"i": i}) for i in range(1000)}
    workers = [HandWorker(broker, [single]) for _ in range(32)]
    start = threading.Barrier(len(workers))

    def claim_until_empty(index: int) -> list[tuple[str, StepAssignment]]:
        worker = workers[index]
        start.wait()
        got: list[tuple[str, StepAssignment]] = []
        while batch := broker.get_steps(worker.worker_id, max_steps=1 + index % 4):
            got.extend((worker.worker_id, a) for a in batch)
        return got

    with ThreadPoolExecutor(len(workers)) as pool:
        claimed = [item for got in pool.map(claim_until_empty, range(32)) for item in got]
    # A claim that lost a database race may have put its rows back after the
    # others stopped looking; they must still be there, once.
    claimed += [(workers[0].worker_id, a) for a in workers[0].claim_all()]

    keys = [(a.instance_id, a.step_name) for _, a in claimed]
    assert len(keys) == len(set(keys)) == 1000
    assert {run_id for run_id, _ in keys} == runs
    assert len({a.lease_token for _, a in claimed}) == 1000
    assert len({holder for holder, _ in claimed}) > 1, "the threads did not race"
    for holder, a in claimed[::50]:
        step = broker.get_run(a.instance_id).steps["only"]
        assert (step.status, step.worker_id, step.attempts) == (S.RUNNING, holder, 1)
    assert broker.get_step(workers[1].worker_id) is None


@pytest.mark.parametrize("kind", ["and", "or"])
def test_parents_reporting_at_once_enqueue_the_join_once(broker: StorageBroker, kind: str) -> None:
    parents = [f"p{i}" for i in range(8)]
    if kind == "and":
        fan_in = schema(f"fan-in-{kind}", [(p, "join") for p in parents])
    else:
        fan_in = schema(f"fan-in-{kind}", or_groups=[("join", "first", parents)])
    worker = HandWorker(broker, [fan_in])

    for _ in range(3):
        run_id = broker.dispatch_workflow(fan_in)
        held = worker.claim_named()
        assert sorted(held) == parents
        together = threading.Barrier(len(parents))

        def report(
            name: str,
            held: dict[str, StepAssignment] = held,
            together: threading.Barrier = together,
        ) -> None:
            together.wait()
            worker.succeed(held[name], f"result of {name}")

        with ThreadPoolExecutor(len(parents)) as pool:
            list(pool.map(report, parents))

        joins = worker.claim_all()
        assert [(j.instance_id, j.step_name) for j in joins] == [(run_id, "join")]
        join = joins[0]
        if kind == "and":
            assert join.results == {p: f"result of {p}" for p in parents}
        else:
            [(member, result)] = join.results.items()
            assert member in parents and result == f"result of {member}"
        worker.succeed(join, "joined")
        done = broker.get_run(run_id)
        assert done.status is S.SUCCEEDED and done.steps["join"].attempts == 1
        assert all(done.steps[p].status is S.SUCCEEDED for p in parents)


def test_concurrent_dispatches_with_one_key_create_one_run(broker: StorageBroker) -> None:
    single = schema("idempotent", steps=["only"])
    together = threading.Barrier(32)

    def dispatch(_: int) -> str:
        together.wait()
        return broker.dispatch_workflow(single, {"order": 17}, idempotency_key="order-17")

    with ThreadPoolExecutor(32) as pool:
        run_ids = set(pool.map(dispatch, range(32)))
    assert len(run_ids) == 1
    page = broker.list_runs()
    assert [run.run_id for run in page.items] == list(run_ids)
    assert broker.list_workflows() == [single]
    worker = HandWorker(broker, [single])
    assert [a.instance_id for a in worker.claim_all()] == list(run_ids)


# -- leases ----------------------------------------------------------------------------------


def _expire(broker: StorageBroker, expected: int = 1) -> None:
    """Wait until the broker has expired ``expected`` leases (it judges by its own clock)."""
    done = 0

    def expired() -> bool:
        nonlocal done
        done += broker.expire_leases()
        return done >= expected

    wait_until(expired, f"{expected} lease(s) to run out")
    assert done == expected


def test_expired_lease_is_requeued_and_the_late_report_rejected(backend: Backend) -> None:
    broker = backend.open(default_lease=0.3)
    chain = schema("lease", [("a", "b")])
    first, second = HandWorker(broker, [chain]), HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    lost = first.claim()
    assert lost is not None and lost.attempt == 1

    _expire(broker)
    requeued = broker.get_run(run_id).steps["a"]
    assert (requeued.status, requeued.attempts, requeued.worker_id) == (S.PENDING, 1, None)

    again = second.claim()
    assert again is not None and again.step_name == "a"
    assert again.attempt == 2 and again.lease_token != lost.lease_token
    before = snapshot(broker)
    with pytest.raises(LeaseConflictError):
        first.succeed(lost, "late")
    with pytest.raises(LeaseConflictError):
        first.report(lost, S.SUCCEEDED, "late", token=None)
    with pytest.raises(LeaseConflictError):
        second.report(again, S.SUCCEEDED, "stale token", token=lost.lease_token)
    assert snapshot(broker) == before

    second.succeed(again, "on time")
    b = second.claim()
    assert b is not None and b.results == {"a": "on time"}
    second.succeed(b)
    done = broker.get_run(run_id)
    assert done.status is S.SUCCEEDED
    assert (done.steps["a"].attempts, done.steps["a"].worker_id) == (2, second.worker_id)


def test_a_report_after_the_deadline_is_rejected_before_any_sweep(backend: Backend) -> None:
    broker = backend.open(default_lease=0.3)
    single = schema("late", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    late = worker.claim()
    assert late is not None and late.deadline is not None
    deadline = late.deadline
    wait_until(lambda: datetime.now(UTC) > deadline, "the lease to run out")

    before = snapshot(broker)
    with pytest.raises(LeaseConflictError):
        worker.succeed(late, "too late")
    assert snapshot(broker) == before
    assert broker.get_run(run_id).steps["only"].status is S.RUNNING
    _expire(broker)
    assert broker.get_run(run_id).steps["only"].status is S.PENDING


def test_heartbeats_keep_a_lease_alive(backend: Backend) -> None:
    broker = backend.open(default_lease=0.3)
    single = schema("heartbeat", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    held = worker.claim()
    assert held is not None and held.deadline is not None and held.lease_token
    first_deadline = held.deadline

    def beat_past_first_deadline() -> bool:
        reply = broker.keep_alive(worker.worker_id, [held.lease_token or ""])
        assert [ref.lease_token for ref in reply.extended] == [held.lease_token]
        assert not reply.lost and not reply.cancelled
        assert reply.deadline is not None and reply.deadline > first_deadline
        return (datetime.now(UTC) - first_deadline).total_seconds() > 0.1

    wait_until(beat_past_first_deadline, "time to pass the first deadline", interval=0.05)
    assert broker.keep_alive(worker.worker_id).extended[0].instance_id == run_id
    assert broker.expire_leases() == 0
    worker.succeed(held, "kept")
    assert broker.get_run(run_id).result == {"only": "kept"}
    reply = broker.keep_alive(worker.worker_id, [held.lease_token])
    assert [ref.lease_token for ref in reply.lost] == [held.lease_token] and not reply.extended


def test_stale_and_foreign_heartbeats_extend_nothing(backend: Backend) -> None:
    broker = backend.open(default_lease=0.3)
    single = schema("stale-heartbeat", steps=["only"])
    first, second = HandWorker(broker, [single]), HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    stale = first.claim()
    assert stale is not None and stale.lease_token
    _expire(broker)
    fresh = second.claim()
    assert fresh is not None and fresh.lease_token and fresh.deadline is not None

    reply = broker.keep_alive(first.worker_id, [stale.lease_token])
    assert [ref.lease_token for ref in reply.lost] == [stale.lease_token]
    assert not reply.extended and reply.deadline is None
    assert broker.keep_alive(first.worker_id).model_dump() == {
        "deadline": None,
        "extended": [],
        "lost": [],
        "cancelled": [],
    }
    foreign = broker.keep_alive(first.worker_id, [fresh.lease_token])
    assert [ref.lease_token for ref in foreign.lost] == [fresh.lease_token]
    assert not foreign.extended
    made_up = broker.keep_alive(second.worker_id, ["not-a-token"])
    assert [ref.lease_token for ref in made_up.lost] == ["not-a-token"]
    assert not made_up.extended

    # Nothing above extended the lease: it runs out on time.
    deadline = fresh.deadline
    wait_until(lambda: datetime.now(UTC) > deadline, "the lease to run out")
    _expire(broker)
    assert broker.get_run(run_id).steps["only"].attempts == 2
    assert broker.get_run(run_id).steps["only"].status is S.PENDING


def test_attempts_are_bounded_then_the_step_fails(backend: Backend) -> None:
    broker = backend.open(default_lease=0.2, default_max_attempts=2)
    chain = schema("bounded", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    for attempt in (1, 2):
        held = worker.claim()
        assert held is not None and held.attempt == attempt
        _expire(broker)

    assert worker.claim() is None
    done = broker.get_run(run_id)
    assert done.status is S.FAILED and done.result == {"b": None}
    a = done.steps["a"]
    assert (a.status, a.attempts) == (S.FAILED, 2)
    assert a.error is not None and a.error.type == "LeaseExpired"
    assert done.steps["b"].status is S.CANCELLED
    assert broker.expire_leases() == 0


def test_step_timeout_is_the_lease_and_retry_policy_bounds_attempts(backend: Backend) -> None:
    class Slow(Step):
        def run_step(self) -> None:
            raise AssertionError("the broker never runs steps")

    slow = Slow(name="slow", policies=[StepTimeoutPolicy(0.25), RetryPolicy(1)])
    free = Slow(name="free")
    workflow = Workflow(outputs=[slow, free], workflow_id="policies")
    broker = backend.open(default_lease=30, default_max_attempts=5)
    worker = HandWorker(broker, [workflow.to_schema()])
    run_id = workflow.dispatch(broker)

    held = worker.claim_named()
    started = broker.get_run(run_id).steps
    for name, lease in (("slow", 0.25), ("free", 30.0)):
        deadline, start = held[name].deadline, started[name].started_at
        assert deadline is not None and start is not None
        assert (deadline - start).total_seconds() == pytest.approx(lease, abs=1e-3)
    worker.succeed(held["free"], "free")

    _expire(broker)
    retry = worker.claim()
    assert retry is not None and retry.step_name == "slow" and retry.attempt == 2
    _expire(broker)
    done = broker.get_run(run_id)
    assert done.status is S.FAILED
    assert (done.steps["slow"].status, done.steps["slow"].attempts) == (S.FAILED, 2)
    assert done.steps["slow"].error is not None
    assert done.steps["slow"].error.type == "LeaseExpired"


def test_the_sweeper_requeues_expired_leases_by_itself(backend: Backend) -> None:
    broker = backend.open(default_lease=0.2, sweep_interval=0.05)
    single = schema("sweeper", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    assert worker.claim() is not None
    wait_until(
        lambda: broker.get_run(run_id).steps["only"].status is S.PENDING,
        "the sweeper to requeue the step",
    )
    assert broker.get_run(run_id).steps["only"].attempts == 1


# -- durability ------------------------------------------------------------------------------


def test_a_new_broker_on_the_same_database_carries_on(durable_backend: Backend) -> None:
    diamond = schema("durable", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    first = durable_backend.open()
    worker = HandWorker(first, [diamond], name="survivor")
    run_id = first.dispatch_workflow(diamond, {"n": 5}, idempotency_key="durable-1")
    untouched = first.dispatch_workflow(diamond, {"n": 6})
    a = worker.claim()
    assert a is not None and a.instance_id == run_id
    worker.succeed(a, 10)
    in_flight = worker.claim()
    assert in_flight is not None and in_flight.instance_id == untouched  # its a, FIFO
    b_or_c = worker.claim()
    assert b_or_c is not None and b_or_c.instance_id == run_id
    before = snapshot(first)
    first.close()

    second = durable_backend.open()
    assert snapshot(second) == before
    assert second.dispatch_workflow(diamond, {"n": 5}, idempotency_key="durable-1") == run_id
    # The worker, its leases and the queue all survived.
    reply = second.keep_alive(worker.worker_id)
    assert {ref.lease_token for ref in reply.extended} == {
        in_flight.lease_token,
        b_or_c.lease_token,
    }
    resumed = HandWorker.resume(second, worker.worker_id)
    resumed.succeed(b_or_c, 20)
    resumed.succeed(in_flight, 60)
    resumed.drive(
        {"b": 20, "c": 20, "d": lambda d: sum(d.results.values()) + d.workflow_inputs["n"]}
    )
    second.close()

    third = durable_backend.open()
    done = third.get_run(run_id)
    assert done.status is S.SUCCEEDED and done.result == {"d": 20 + 20 + 5}
    assert done.steps["a"].result == 10
    other = third.get_run(untouched)
    assert other.status is S.SUCCEEDED and other.inputs == {"n": 6}
    assert other.steps["a"].result == 60 and other.result == {"d": 20 + 20 + 6}
    assert third.list_workflows() == [diamond]
    assert [w.name for w in third.list_workers()] == ["survivor"]


# -- bad input -------------------------------------------------------------------------------


def test_unknown_ids_are_typed_errors_and_change_nothing(broker: StorageBroker) -> None:
    chain = schema("unknown", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    held = worker.claim()
    assert held is not None
    before = snapshot(broker)

    def report(**changes: Any) -> StepReport:
        fields = {
            "workflow_id": "unknown",
            "instance_id": run_id,
            "step_name": "a",
            "state": S.SUCCEEDED,
            "result": 1,
            "lease_token": held.lease_token,
            **changes,
        }
        return StepReport.model_validate(fields)

    with pytest.raises(WorkerNotFoundError):
        broker.get_step("w-nobody")
    with pytest.raises(WorkerNotFoundError):
        broker.get_steps("w-nobody", max_steps=3)
    with pytest.raises(WorkerNotFoundError):
        broker.keep_alive("w-nobody")
    with pytest.raises(WorkerNotFoundError):
        broker.report_step("w-nobody", report())
    with pytest.raises(RunNotFoundError):
        broker.report_step(worker.worker_id, report(instance_id="no-such-run"))
    with pytest.raises(StepNotFoundError):
        broker.report_step(worker.worker_id, report(step_name="no-such-step"))
    with pytest.raises(InvalidInputError):
        broker.report_step(worker.worker_id, report(workflow_id="another-workflow"))
    for state in (S.PENDING, S.RUNNING):
        with pytest.raises(InvalidInputError):
            broker.report_step(worker.worker_id, report(state=state))
    with pytest.raises(RunNotFoundError):
        broker.get_run("no-such-run")
    with pytest.raises(RunNotFoundError):
        broker.wait_for_run("no-such-run", timeout=0.1)
    with pytest.raises(RunNotFoundError):
        broker.cancel_run("no-such-run")
    with pytest.raises(InvalidInputError):
        broker.list_runs(cursor="not-a-cursor")
    with pytest.raises(InvalidInputError):
        broker.list_runs(limit=0)
    with pytest.raises(InvalidInputError):
        broker.get_steps(worker.worker_id, max_steps=0)
    assert snapshot(broker) == before

    worker.succeed(held, 1)  # the real holder is still fine
    assert statuses(broker, run_id)["a"] is S.SUCCEEDED


def test_reports_for_steps_not_held_are_conflicts(broker: StorageBroker) -> None:
    chain = schema("not-held", [("a", "b"), ("x", "y")])
    holder, other = HandWorker(broker, [chain]), HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    a = holder.claim()
    assert a is not None and a.step_name == "a"
    before = snapshot(broker)

    def forged(step_name: str) -> StepAssignment:
        return StepAssignment(workflow_id="not-held", instance_id=run_id, step_name=step_name)

    with pytest.raises(LeaseConflictError):
        holder.succeed(forged("b"), 1)  # not ready yet
    with pytest.raises(LeaseConflictError):
        holder.succeed(forged("x"), 1)  # ready, never handed out
    with pytest.raises(LeaseConflictError):
        other.succeed(a, 1)  # someone else's lease, with its token
    with pytest.raises(LeaseConflictError):
        other.report(a, S.SUCCEEDED, 1, token=None)
    with pytest.raises(LeaseConflictError):
        holder.report(a, S.SUCCEEDED, 1, token=secrets.token_urlsafe(24))  # a guess
    assert snapshot(broker) == before

    holder.succeed(a, 1)
    done_once = snapshot(broker)
    holder.succeed(a, 1)  # an exact replay is answered as the first time
    holder.report(a, S.SUCCEEDED, 1, token=None)
    # A replay claims nothing either, although a step is ready for the holder.
    assert holder.report(a, S.SUCCEEDED, 1, claim_next=True) is None
    assert snapshot(broker) == done_once
    with pytest.raises(LeaseConflictError):
        holder.succeed(a, 2)
    with pytest.raises(LeaseConflictError):
        holder.fail(a)
    with pytest.raises(LeaseConflictError):
        other.succeed(a, 1)
    assert snapshot(broker) == done_once
    assert [s.step_name for s in holder.claim_all()] == ["x", "b"]


def test_a_report_without_token_is_accepted_from_the_holder(broker: StorageBroker) -> None:
    single = schema("no-token", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    held = worker.claim()
    assert held is not None
    worker.report(held, S.SUCCEEDED, "seed style", token=None)
    assert broker.get_run(run_id).result == {"only": "seed style"}


def _cycle() -> dict[str, Any]:
    return {
        "workflow_id": "bad",
        "steps": [{"name": "a"}, {"name": "b"}],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
        "outputs": ["b"],
    }


BAD_SCHEMAS: list[tuple[dict[str, Any], type[Exception]]] = [
    (_cycle(), CycleError),
    ({**_cycle(), "edges": [{"source": "a", "target": "ghost"}]}, UnknownStepError),
    ({**_cycle(), "edges": [], "outputs": ["ghost"]}, UnknownStepError),
    ({**_cycle(), "steps": [{"name": "a"}, {"name": "a"}], "edges": []}, DuplicateStepNameError),
    ({**_cycle(), "edges": [{"source": "a", "target": "a"}]}, WorkflowDefinitionError),
    ({**_cycle(), "steps": []}, InvalidInputError),
    ({**_cycle(), "edges": [], "unexpected": 1}, InvalidInputError),
    ({"workflow_id": "bad"}, InvalidInputError),
]


def test_malformed_schemas_are_typed_errors_and_change_nothing(broker: StorageBroker) -> None:
    good = schema("good", [("a", "b")])
    worker = HandWorker(broker, [good])
    broker.dispatch_workflow(good)
    before = snapshot(broker)
    for bad, error in BAD_SCHEMAS:
        with pytest.raises(error):
            broker.register_worker([bad])  # type: ignore[list-item]
        with pytest.raises(error):
            broker.register_worker([good, bad])  # type: ignore[list-item]
        with pytest.raises(error):
            broker.dispatch_workflow(bad)  # type: ignore[arg-type]
    for not_a_schema in (42, "good", None, [good]):
        with pytest.raises(InvalidInputError):
            broker.dispatch_workflow(not_a_schema)  # type: ignore[arg-type]
    assert snapshot(broker) == before
    assert broker.get_step(worker.worker_id) is not None


def test_a_good_schema_as_a_dict_is_accepted(broker: StorageBroker) -> None:
    as_dict = schema("as-dict", [("a", "b")]).model_dump(mode="json")
    worker_id = broker.register_worker([as_dict])  # type: ignore[list-item]
    run_id = broker.dispatch_workflow(as_dict)  # type: ignore[arg-type]
    assert broker.list_workflows() == [WorkflowSchema.model_validate(as_dict)]
    assignment = broker.get_step(worker_id)
    assert assignment is not None and assignment.instance_id == run_id


NOT_JSON: list[Any] = [
    object(),
    {"key": [1, object()]},
    float("nan"),
    {"ratio": float("inf")},
    "nul \x00 inside",
    {"nested": ["fine", "nul\x00"]},
    {"nul\x00key": 1},
]


def test_results_that_are_not_json_are_rejected(broker: StorageBroker) -> None:
    single = schema("results", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    held = worker.claim()
    assert held is not None
    before = snapshot(broker)
    for bad in NOT_JSON:
        with pytest.raises(ResultNotSerializableError):
            worker.succeed(held, bad)
    assert snapshot(broker) == before
    assert broker.get_run(run_id).steps["only"].status is S.RUNNING

    worker.succeed(held, {"text": "a \\u0000 that is only text", "ok": [1.5, None]})
    assert broker.get_run(run_id).result == {
        "only": {"text": "a \\u0000 that is only text", "ok": [1.5, None]}
    }


@pytest.mark.parametrize("lease", [0.0, -1.0, float("inf"), float("nan")])
def test_a_lease_that_is_not_a_positive_finite_time_is_refused(lease: float) -> None:
    # An endless lease would never hand a dead worker's step to another one
    # (and no storage could write its deadline).
    with pytest.raises(InvalidInputError, match="default_lease must be a positive, finite"):
        StorageBroker(MemoryStorage(), default_lease=lease)


def test_inputs_that_are_not_json_are_rejected(broker: StorageBroker) -> None:
    single = schema("inputs", steps=["only"])
    broker.dispatch_workflow(single, {"fine": True})
    before = snapshot(broker)
    for bad in NOT_JSON[1:]:
        with pytest.raises(ResultNotSerializableError):
            broker.dispatch_workflow(single, {"value": bad})
    with pytest.raises(InvalidInputError):
        broker.dispatch_workflow(single, ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        broker.dispatch_workflow(single, idempotency_key="")
    assert snapshot(broker) == before


def test_results_over_the_size_limit_are_rejected(backend: Backend) -> None:
    broker = backend.open(max_result_bytes=64)
    single = schema("sized", steps=["only"])
    worker = HandWorker(broker, [single])
    with pytest.raises(PayloadTooLargeError):
        broker.dispatch_workflow(single, {"blob": "x" * 100})
    run_id = broker.dispatch_workflow(single, {"small": 1})
    held = worker.claim()
    assert held is not None
    before = snapshot(broker)
    with pytest.raises(PayloadTooLargeError):
        worker.succeed(held, "x" * 100)
    assert snapshot(broker) == before
    worker.succeed(held, "x" * 10)
    assert broker.get_run(run_id).result == {"only": "x" * 10}


# -- run API, schemas and workers ------------------------------------------------------------


def test_cancel_run_cancels_pending_steps_and_tells_running_ones(broker: StorageBroker) -> None:
    work = schema("cancel", [("a", "b"), ("b", "c"), ("x", "y")])
    worker = HandWorker(broker, [work])
    run_id = broker.dispatch_workflow(work)
    held = worker.claim()
    assert held is not None and held.step_name in ("a", "x")
    bystander = broker.dispatch_workflow(work)

    cancelled = broker.cancel_run(run_id)
    assert cancelled.cancel_requested and cancelled.status is S.RUNNING
    assert {n: s.status for n, s in cancelled.steps.items()} == {
        name: S.RUNNING if name == held.step_name else S.CANCELLED for name in "abcxy"
    }
    assert broker.get_run(run_id) == cancelled
    reply = broker.keep_alive(worker.worker_id)
    assert [(r.instance_id, r.step_name) for r in reply.cancelled] == [(run_id, held.step_name)]
    assert not reply.extended and not reply.lost
    assert {a.instance_id for a in worker.claim_all()} == {bystander}
    with pytest.raises(LeaseConflictError):
        worker.succeed(
            StepAssignment(workflow_id="cancel", instance_id=run_id, step_name="b"), "too late"
        )

    worker.report(held, S.CANCELLED)
    done = broker.get_run(run_id)
    assert done.status is S.CANCELLED and done.finished_at is not None
    assert done.result == {"c": None, "y": None}
    assert done.steps[held.step_name].status is S.CANCELLED
    with pytest.raises(RunFinishedError):
        broker.cancel_run(run_id)
    assert broker.get_run(run_id) == done
    assert broker.get_run(bystander).cancel_requested is False
    assert broker.list_runs(status=S.CANCELLED).items[0].run_id == run_id


def test_cancelled_step_whose_lease_runs_out_ends_the_run(backend: Backend) -> None:
    broker = backend.open(default_lease=0.2)
    chain = schema("cancel-expire", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    assert worker.claim() is not None
    broker.cancel_run(run_id)
    _expire(broker)
    done = broker.get_run(run_id)
    assert done.status is S.CANCELLED
    assert statuses(broker, run_id) == {"a": S.CANCELLED, "b": S.CANCELLED}
    assert worker.claim() is None


def test_cancelling_a_finished_run_is_a_conflict(broker: StorageBroker) -> None:
    single = schema("finished", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    worker.drive()
    before = snapshot(broker)
    with pytest.raises(RunFinishedError):
        broker.cancel_run(run_id)
    assert snapshot(broker) == before
    assert broker.get_run(run_id).status is S.SUCCEEDED


def test_list_runs_pages_newest_first_with_filters(broker: StorageBroker) -> None:
    one, two = schema("one", steps=["s"]), schema("two", steps=["s"])
    worker = HandWorker(broker, [one, two])
    created = [broker.dispatch_workflow(one if i % 3 else two, {"i": i}) for i in range(8)]
    finished = worker.claim()
    assert finished is not None and finished.instance_id == created[0]
    worker.succeed(finished, 0)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = broker.list_runs(limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen += [run.run_id for run in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == created[::-1] and pages == 3
    by_workflow = broker.list_runs(workflow_id="two")
    assert [run.run_id for run in by_workflow.items] == [created[i] for i in (6, 3, 0)]
    assert {run.workflow_id for run in by_workflow.items} == {"two"}
    assert [r.run_id for r in broker.list_runs(status=S.SUCCEEDED).items] == [created[0]]
    pending = broker.list_runs(status=S.PENDING, workflow_id="one", limit=2)
    assert [run.run_id for run in pending.items] == [created[7], created[5]]
    assert pending.next_cursor is not None
    rest = broker.list_runs(status=S.PENDING, workflow_id="one", cursor=pending.next_cursor)
    assert [run.run_id for run in rest.items] == [created[i] for i in (4, 2, 1)]
    assert rest.next_cursor is None
    assert broker.list_runs(workflow_id="nobody").items == []


def test_prune_runs_deletes_only_old_finished_runs(broker: StorageBroker) -> None:
    single = schema("prune", steps=["only"])
    worker = HandWorker(broker, [single])
    old = [broker.dispatch_workflow(single, {"i": i}) for i in range(3)]
    worker.drive()
    running = broker.dispatch_workflow(single, {"i": 3})
    assert broker.prune_runs(3600) == 0

    pruned = 0

    def all_old_pruned() -> bool:
        nonlocal pruned
        pruned += broker.prune_runs(0.01)
        return pruned >= len(old)

    wait_until(all_old_pruned, "the finished runs to be old enough")
    assert pruned == len(old)
    for run_id in old:
        with pytest.raises(RunNotFoundError):
            broker.get_run(run_id)
    assert [run.run_id for run in broker.list_runs().items] == [running]
    assert [a.step_name for a in worker.drive()] == ["only"]
    assert broker.get_run(running).status is S.SUCCEEDED


def test_idempotency_key_returns_the_run_or_a_conflict(broker: StorageBroker) -> None:
    single, other = schema("keyed", steps=["only"]), schema("keyed-other", steps=["only"])
    run_id = broker.dispatch_workflow(single, {"x": 1}, idempotency_key="k-1")
    assert broker.dispatch_workflow(single, {"x": 1}, idempotency_key="k-1") == run_id
    before = snapshot(broker)
    with pytest.raises(IdempotencyConflictError):
        broker.dispatch_workflow(single, {"x": 2}, idempotency_key="k-1")
    with pytest.raises(IdempotencyConflictError):
        broker.dispatch_workflow(other, {"x": 1}, idempotency_key="k-1")
    assert snapshot(broker) == before
    assert broker.dispatch_workflow(single, {"x": 1}, idempotency_key="k-2") != run_id
    assert broker.dispatch_workflow(single, {"x": 1}) != run_id
    assert len(broker.list_runs().items) == 3


def test_workers_only_get_steps_of_versions_they_registered(broker: StorageBroker) -> None:
    v1 = schema("versioned", steps=["only"], version="1")
    v2 = schema("versioned", [("only", "extra")], version="2")
    unrelated = schema("unrelated", steps=["only"])
    old, new = HandWorker(broker, [v1]), HandWorker(broker, [v2])
    both, idle = HandWorker(broker, [v1, v2]), HandWorker(broker, [unrelated])
    runs_v1 = [broker.dispatch_workflow(v1) for _ in range(2)]
    runs_v2 = [broker.dispatch_workflow(v2) for _ in range(2)]
    assert [broker.get_run(r).workflow_version for r in runs_v1 + runs_v2] == [
        "1",
        "1",
        "2",
        "2",
    ]

    assert idle.claim() is None
    got_old = old.claim_all()
    assert [(a.instance_id, a.workflow_version) for a in got_old] == [(r, "1") for r in runs_v1]
    got_new = new.claim()
    assert got_new is not None and (got_new.instance_id, got_new.workflow_version) == (
        runs_v2[0],
        "2",
    )
    got_both = both.claim_all()
    assert [a.instance_id for a in got_both] == [runs_v2[1]]
    assert old.claim() is None
    assert sorted((s.workflow_id, s.version) for s in broker.list_workflows()) == [
        ("unrelated", "1"),
        ("versioned", "1"),
        ("versioned", "2"),
    ]
    workers = {w.worker_id: w.workflows for w in broker.list_workers()}
    assert workers[both.worker_id] == [("versioned", "1"), ("versioned", "2")]


def test_same_key_with_another_graph_is_a_schema_conflict(broker: StorageBroker) -> None:
    original = schema("conflict", [("a", "b")])
    changed = schema("conflict", [("a", "b"), ("b", "c")])
    retimed = schema("conflict", [("a", "b")], settings={"a": {"timeout_seconds": 5}})
    fresh = schema("conflict-new", steps=["n"])
    HandWorker(broker, [original])
    broker.register_worker([original])  # the same graph again is fine
    before = snapshot(broker)
    for different in (changed, retimed):
        with pytest.raises(SchemaConflictError, match="version"):
            broker.register_worker([different])
        with pytest.raises(SchemaConflictError):
            broker.dispatch_workflow(different)
        with pytest.raises(SchemaConflictError):
            broker.register_worker([fresh, different])
    assert snapshot(broker) == before

    # Nothing of the refused registration stuck: the fresh schema is stored
    # (and found again by another broker on the same storage) only once accepted.
    run_id = broker.dispatch_workflow(fresh)
    assert [(s.workflow_id, s.version) for s in broker.list_workflows()] == [
        ("conflict", "1"),
        ("conflict-new", "1"),
    ]
    bumped = changed.model_copy(update={"version": "2"})
    worker = HandWorker(broker, [bumped, fresh])
    assert [a.instance_id for a in worker.claim_all()] == [run_id]


def test_worker_ids_are_never_reused(broker: StorageBroker) -> None:
    single = schema("workers", steps=["only"])
    ids = [broker.register_worker([single], name="same-name") for _ in range(5)]
    assert len(set(ids)) == 5
    listed = broker.list_workers()
    assert [w.worker_id for w in listed] == ids
    assert all(w.name == "same-name" and w.workflows == [("workers", "1")] for w in listed)
    with pytest.raises(InvalidInputError):
        broker.register_worker([single], name="")
    assert [w.worker_id for w in broker.list_workers()] == ids


# -- the custom broker of seed 000 -----------------------------------------------------------

# Copied from the seed's "Custom broker class" section, as a user would write it.
SEED_000_CUSTOM_BROKER = """
from fuseline.broker import Broker, StepAssignment, StepReport
from fuseline.workflow import WorkflowSchema
from fuseline.storage import RuntimeStorage

class MyBroker(Broker):
    def __init__(self, storage: RuntimeStorage) -> None:
        self._store = storage

    def register_worker(self, workflows: list[WorkflowSchema]) -> str:
        ...  # persist schemas and return a worker id

    def dispatch_workflow(self, workflow: WorkflowSchema, inputs=None) -> str:
        ...  # create run and enqueue starting steps

    def get_step(self, worker_id: str) -> StepAssignment | None:
        ...  # pop the next ready step from storage

    def report_step(self, worker_id: str, report: StepReport) -> None:
        ...  # store state and enqueue successors

    def keep_alive(self, worker_id: str) -> None:
        ...  # optional heartbeat handling
"""


def test_the_seed_custom_broker_skeleton_subclasses_broker() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(SEED_000_CUSTOM_BROKER, "seed-000", "exec"), namespace)  # noqa: S102
    my_broker_class = namespace["MyBroker"]
    assert issubclass(my_broker_class, Broker)
    storage = MemoryStorage()
    assert isinstance(storage, RuntimeStorage)
    with my_broker_class(storage) as custom:
        assert isinstance(custom, Broker) and vars(custom)["_store"] is storage
        assert custom.register_worker([schema("seed", steps=["s"])]) is None
        assert custom.keep_alive("w") is None
        with pytest.raises(NotImplementedError, match="MyBroker"):
            custom.get_run("r")
    storage.close()
    assert fuseline.broker.StepAssignment is fuseline.messages.StepAssignment
    assert fuseline.broker.StepReport is fuseline.messages.StepReport

    class Incomplete(Broker):
        def register_worker(self, workflows: list[WorkflowSchema]) -> str:
            return "w"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


class _FlakyStorage(MemoryStorage):
    """Memory storage that can be made unreachable, like a database during an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def atomic(self, body: Any, *, write: bool = True) -> Any:
        if self.down:
            raise BrokerUnavailableError("the database is away")
        return super().atomic(body, write=write)


def test_after_an_outage_a_lease_gets_one_more_lease_before_it_counts_as_lost() -> None:
    storage = _FlakyStorage()
    broker = StorageBroker(storage, default_lease=0.5, sweep_interval=0)
    single = schema("outage", steps=["only"])
    worker = HandWorker(broker, [single])
    run_id = broker.dispatch_workflow(single)
    held = worker.claim()
    assert held is not None and held.deadline is not None
    deadline = held.deadline

    storage.down = True
    with pytest.raises(BrokerUnavailableError):
        broker.expire_leases()  # the sweeper notices the outage
    wait_until(lambda: datetime.now(UTC) > deadline, "the lease to run out during the outage")
    storage.down = False

    # Back, but the worker had no chance to heartbeat: the lease is not taken away.
    assert broker.expire_leases() == 0
    assert broker.get_run(run_id).steps["only"].status is S.RUNNING
    # A worker that is alive heartbeats and keeps its step, past the old deadline.
    beat = broker.keep_alive(worker.worker_id, [held.lease_token or ""])
    assert [ref.lease_token for ref in beat.extended] == [held.lease_token]
    assert beat.lost == []
    # One that stays silent loses it once the storage has been back a lease long.
    wait_until(lambda: broker.expire_leases() == 1, "the lease to count as lost")
    assert broker.get_run(run_id).steps["only"].status is S.PENDING
    with pytest.raises(LeaseConflictError):
        worker.succeed(held, "too late now")
    broker.close()
