"""The pure rules module, driven directly with facts."""

from fuseline.status import Status
from fuseline.workflow import WorkflowSchema
from fuseline.workflow.rules import (
    Decision,
    RunGraph,
    StepFacts,
    cancel_run,
    choose_branch,
    decide,
    run_status,
    settle,
    start,
)


def graph() -> RunGraph:
    return RunGraph(
        WorkflowSchema.model_validate(
            {
                "workflow_id": "w",
                "steps": [{"name": n} for n in ("a", "b", "c", "d", "e")],
                "edges": [
                    {"source": "a", "target": "b", "label": "go"},
                    {"source": "a", "target": "c"},
                    {"source": "b", "target": "d"},
                    {"source": "c", "target": "d"},
                    {"source": "d", "target": "e"},
                ],
                "or_groups": [{"target": "d", "parameter": "v", "members": ["b", "c"]}],
                "outputs": ["e"],
            }
        )
    )


def test_start_readies_roots_only() -> None:
    assert [r.name for r in start(graph()).ready] == ["a"]


def test_branch_choice_and_skip_cascade_stops_at_or_group() -> None:
    g = graph()
    assert choose_branch(g, "a", "go") == "go"
    assert choose_branch(g, "a", "other") is None
    assert choose_branch(g, "a", {"go": 1}) is None
    facts = {"a": StepFacts(Status.SUCCEEDED, branch="go", order=1)}
    out = settle(g, facts, ["a"])
    assert [r.name for r in out.ready] == ["b"]
    assert out.skipped == ["c"]
    # d is an OR join of b and c: still waiting on b.
    assert decide(g, "d", {**facts, "c": StepFacts(Status.SKIPPED)})[0] is Decision.WAIT


def test_or_group_first_finisher_wins_and_is_readied_once() -> None:
    g = graph()
    facts = {
        "a": StepFacts(Status.SUCCEEDED, order=1),
        "b": StepFacts(Status.SUCCEEDED, order=3),
        "c": StepFacts(Status.SUCCEEDED, order=2),
    }
    decision, winners = decide(g, "d", facts)
    assert decision is Decision.READY and winners == {"v": "c"}
    queued = {**facts, "d": StepFacts(Status.PENDING, queued=True)}
    assert settle(g, queued, ["b"]).ready == []
    assert g.result_sources("d", winners) == ["c"]


def test_failure_cascade_and_run_status() -> None:
    g = graph()
    facts = {"a": StepFacts(Status.FAILED, order=1)}
    out = settle(g, facts, ["a"])
    assert out.cancelled == ["b", "c", "d", "e"]
    final = {**facts, **{n: StepFacts(Status.CANCELLED) for n in out.cancelled}}
    assert run_status(g, final) is Status.FAILED
    assert run_status(g, final, cancel_requested=True) is Status.CANCELLED


def test_run_status_progression() -> None:
    g = graph()
    assert run_status(g, {}) is Status.PENDING
    assert run_status(g, {"a": StepFacts(Status.RUNNING)}) is Status.RUNNING
    assert run_status(g, {"a": StepFacts(Status.SUCCEEDED)}) is Status.RUNNING
    done = {n: StepFacts(Status.SUCCEEDED) for n in "abcde"}
    assert run_status(g, done) is Status.SUCCEEDED
    skipped_output = {**done, "e": StepFacts(Status.SKIPPED)}
    assert run_status(g, skipped_output) is Status.SUCCEEDED


def test_cancel_run_lists_pending_steps_only() -> None:
    g = graph()
    facts = {"a": StepFacts(Status.SUCCEEDED), "b": StepFacts(Status.RUNNING)}
    assert cancel_run(g, facts) == ["c", "d", "e"]
