"""``report_steps``: several reports in one transaction, on every storage backend.

A batch must do what the same reports sent one by one would do (results
stored, successors enqueued once, runs finished), judge each report on its
own, and claim the worker's next steps in the same transaction.
"""

from __future__ import annotations

from typing import Any

import pytest
from broker_contract_support import HandWorker, schema

from fuseline.broker import StorageBroker
from fuseline.errors import (
    InvalidInputError,
    LeaseConflictError,
    PayloadTooLargeError,
    WorkerNotFoundError,
)
from fuseline.messages import StepAssignment, StepReport
from fuseline.status import Status

S = Status


def _report(
    assignment: StepAssignment, result: Any, *, token: str | None = "", state: Status = S.SUCCEEDED
) -> StepReport:
    return HandWorker.report_of(assignment, state, result, token=True if token == "" else token)


def test_a_batch_records_every_report_and_claims_the_successors(broker: StorageBroker) -> None:
    chain = schema("batch-chain", [("a", "b")])
    worker = HandWorker(broker, [chain])
    runs = {broker.dispatch_workflow(chain, {"n": n}): n for n in range(3)}
    firsts = worker.claim_all()
    assert sorted(a.step_name for a in firsts) == ["a", "a", "a"]
    # One claim of several steps leases each with a token of its own and starts its run.
    assert len({a.lease_token for a in firsts}) == 3
    assert {broker.get_run(run_id).status for run_id in runs} == {S.RUNNING}

    reply = broker.report_steps(
        worker.worker_id, [_report(a, runs[a.instance_id] * 10) for a in firsts], claim=3
    )

    # One outcome per report, in the order sent, all accepted.
    assert [(o.instance_id, o.step_name, o.accepted) for o in reply.outcomes] == [
        (a.instance_id, "a", True) for a in firsts
    ]
    # The successors the reports made ready were claimed in the same call,
    # each with its own predecessor's result.
    assert sorted(a.instance_id for a in reply.assignments) == sorted(runs)
    assert len({a.lease_token for a in reply.assignments}) == 3
    for b in reply.assignments:
        assert b.step_name == "b" and b.results == {"a": runs[b.instance_id] * 10}
        assert broker.get_run(b.instance_id).steps["b"].worker_id == worker.worker_id
    assert worker.claim() is None

    final = broker.report_steps(
        worker.worker_id, [_report(b, runs[b.instance_id]) for b in reply.assignments], claim=3
    )
    assert all(o.accepted for o in final.outcomes) and final.assignments == []
    for run_id, n in runs.items():
        done = broker.get_run(run_id)
        assert (done.status, done.result) == (S.SUCCEEDED, {"b": n})


def test_a_batch_claims_no_more_than_asked(broker: StorageBroker) -> None:
    single = schema("batch-limit", steps=["only"])
    worker = HandWorker(broker, [single])
    for n in range(5):
        broker.dispatch_workflow(single, {"n": n})
    held = [worker.claim(), worker.claim()]
    assert all(a is not None for a in held)
    reports = [_report(a, "ok") for a in held if a is not None]

    reply = broker.report_steps(worker.worker_id, reports, claim=1)

    assert len(reply.assignments) == 1
    assert len(worker.claim_all()) == 2, "the two steps not claimed stay ready"


def test_a_refused_report_does_not_refuse_the_others(broker: StorageBroker) -> None:
    single = schema("batch-mixed", steps=["only"])
    worker = HandWorker(broker, [single])
    broker.max_result_bytes = 1000
    for n in range(4):
        broker.dispatch_workflow(single, {"n": n})
    good, stale, large, failed = worker.claim_all()

    reply = broker.report_steps(
        worker.worker_id,
        [
            _report(good, "ok"),
            _report(stale, "late", token="not-the-token"),  # noqa: S106 - a wrong lease token
            _report(large, "x" * 5000),
            _report(failed, None, state=S.FAILED),
        ],
    )

    codes = [o.code for o in reply.outcomes]
    assert codes == [None, LeaseConflictError.code, PayloadTooLargeError.code, None]
    refusal = reply.outcomes[1].error()
    assert isinstance(refusal, LeaseConflictError) and reply.outcomes[1].message
    assert isinstance(reply.outcomes[2].error(), PayloadTooLargeError)
    assert broker.get_run(good.instance_id).result == {"only": "ok"}
    assert broker.get_run(failed.instance_id).status is S.FAILED
    # The refused reports changed nothing: their steps are still running,
    # and the holder can still report them.
    for refused in (stale, large):
        step = broker.get_run(refused.instance_id).steps["only"]
        assert (step.status, step.result) == (S.RUNNING, None)
    worker.succeed(stale, "on time")
    assert broker.get_run(stale.instance_id).result == {"only": "on time"}


def test_a_repeated_batch_changes_nothing_and_claims_nothing(broker: StorageBroker) -> None:
    chain = schema("batch-repeat", [("a", "b")])
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain)
    a = worker.claim()
    assert a is not None
    sent = [_report(a, 1)]
    first = broker.report_steps(worker.worker_id, sent, claim=1)
    assert [b.step_name for b in first.assignments] == ["b"]

    # The worker did not get the answer and sends the same batch again.
    again = broker.report_steps(worker.worker_id, sent, claim=1)

    assert [o.accepted for o in again.outcomes] == [True]
    assert again.assignments == []
    assert broker.get_run(run_id).steps["a"].result == 1
    # A different outcome for the reported step is a conflict.
    changed = broker.report_steps(worker.worker_id, [_report(a, 2)])
    assert [o.code for o in changed.outcomes] == [LeaseConflictError.code]


def test_reports_of_one_join_in_one_batch_enqueue_it_once(broker: StorageBroker) -> None:
    diamond = schema("batch-diamond", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    worker = HandWorker(broker, [diamond])
    run_id = broker.dispatch_workflow(diamond)
    a = worker.claim()
    assert a is not None
    worker.succeed(a, 1)
    parents = worker.claim_all()
    assert sorted(p.step_name for p in parents) == ["b", "c"]

    reply = broker.report_steps(
        worker.worker_id, [_report(p, p.step_name) for p in parents], claim=2
    )

    assert [d.step_name for d in reply.assignments] == ["d"]
    assert reply.assignments[0].results == {"b": "b", "c": "c"}
    worker.succeed(reply.assignments[0], "joined")
    assert broker.get_run(run_id).result == {"d": "joined"}


def test_two_parents_of_one_run_and_a_parent_of_another_in_one_batch(
    broker: StorageBroker,
) -> None:
    diamond = schema("batch-two-joins", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    worker = HandWorker(broker, [diamond])
    first, second = (broker.dispatch_workflow(diamond, {"n": n}) for n in (1, 2))
    for a in worker.claim_all():
        worker.succeed(a, a.instance_id)
    parents = {(p.instance_id, p.step_name): p for p in worker.claim_all()}
    assert len(parents) == 4
    sent = [parents[first, "b"], parents[second, "b"], parents[first, "c"]]

    reply = broker.report_steps(worker.worker_id, [_report(p, p.step_name) for p in sent], claim=3)

    # Both parents of the first run were recorded, so its join is ready; the
    # second run's join still waits for c.
    assert [o.accepted for o in reply.outcomes] == [True, True, True]
    assert [(d.instance_id, d.step_name) for d in reply.assignments] == [(first, "d")]
    assert reply.assignments[0].results == {"b": "b", "c": "c"}
    worker.succeed(parents[second, "c"], "c")
    d = worker.claim()
    assert d is not None and (d.instance_id, d.results) == (second, {"b": "b", "c": "c"})
    for join in (reply.assignments[0], d):
        worker.succeed(join, "joined")
    assert {broker.get_run(r).result["d"] for r in (first, second)} == {"joined"}  # type: ignore[index]


def test_a_whole_batch_is_refused_for_bad_arguments(broker: StorageBroker) -> None:
    single = schema("batch-bad", steps=["only"])
    worker = HandWorker(broker, [single])
    broker.dispatch_workflow(single)
    a = worker.claim()
    assert a is not None
    with pytest.raises(WorkerNotFoundError):
        broker.report_steps("w-unknown", [_report(a, 1)])
    with pytest.raises(InvalidInputError):
        broker.report_steps(worker.worker_id, [])
    with pytest.raises(InvalidInputError):
        broker.report_steps(worker.worker_id, [_report(a, 1)], claim=-1)
    # None of it touched the step.
    assert broker.get_run(a.instance_id).steps["only"].status is S.RUNNING


# -- steps claimed from the runs a report just read --------------------------------------
# A step claimed in the transaction of a report of its own run takes the
# run's inputs and its predecessors' results from the rows the report read,
# not from the database; these tests pin that those are the right ones.


def test_a_join_claimed_with_a_report_gets_results_recorded_earlier(
    broker: StorageBroker,
) -> None:
    diamond = schema("known-diamond", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    worker = HandWorker(broker, [diamond])
    run_id = broker.dispatch_workflow(diamond, {"n": 7})
    a = worker.claim()
    assert a is not None
    worker.succeed(a, {"from": "a"})
    parents = worker.claim_named()
    worker.succeed(parents["b"], {"from": "b"})  # in a transaction of its own

    d = worker.report(parents["c"], S.SUCCEEDED, [1, 2], claim_next=True)

    assert d is not None and d.step_name == "d"
    assert d.workflow_inputs == {"n": 7}
    assert d.results == {"b": {"from": "b"}, "c": [1, 2]}
    worker.succeed(d, "joined")
    assert broker.get_run(run_id).result == {"d": "joined"}


def test_an_or_join_claimed_with_its_winners_report_gets_only_the_winner(
    broker: StorageBroker,
) -> None:
    either = schema("known-or", [("j", "out")], or_groups=[("j", "first", ["a", "b"])])
    worker = HandWorker(broker, [either])
    broker.dispatch_workflow(either, {"n": 1})
    members = worker.claim_named()

    j = worker.report(members["b"], S.SUCCEEDED, "b won", claim_next=True)

    assert j is not None and j.step_name == "j"
    assert (j.workflow_inputs, j.results) == ({"n": 1}, {"b": "b won"})
    assert worker.report(members["a"], S.SUCCEEDED, "a lost", claim_next=True) is None
    out = worker.report(j, S.SUCCEEDED, j.results["b"], claim_next=True)
    assert out is not None and (out.step_name, out.results) == ("out", {"j": "b won"})


def test_a_batch_claims_from_reported_and_from_other_runs_alike(broker: StorageBroker) -> None:
    chain = schema("known-mixed", [("a", "b")])
    worker = HandWorker(broker, [chain])
    reported = [broker.dispatch_workflow(chain, {"n": n}) for n in (2, 3)]
    claimed = {a.instance_id: a for a in worker.claim_all()}
    assert sorted(claimed) == sorted(reported)
    waiting = broker.dispatch_workflow(chain, {"n": 1})
    first = worker.claim()
    assert first is not None
    worker.succeed(first, "waiting's a")  # its b is ready, in a run no report reads

    reply = broker.report_steps(
        worker.worker_id, [_report(a, f"{a.instance_id}'s a") for a in claimed.values()], claim=3
    )

    got = {b.instance_id: b for b in reply.assignments}
    assert sorted(got) == sorted([waiting, *reported])
    for run_id, n in [(waiting, 1), (reported[0], 2), (reported[1], 3)]:
        b = got[run_id]
        expected = "waiting's a" if run_id == waiting else f"{run_id}'s a"
        assert (b.step_name, b.workflow_inputs, b.results) == ("b", {"n": n}, {"a": expected})
