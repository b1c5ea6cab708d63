"""Every execution rule of DESIGN.md section 3, run in-process."""

import threading
from typing import Any

import pydantic
import pytest

from fuseline import Condition, Depends, PoolEngine, Status, Step, Workflow


class Const(Step):
    def __init__(self, value: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value
        self.calls = 0

    def run_step(self) -> Any:
        self.calls += 1
        return self.value


class Boom(Step):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def run_step(self) -> None:
        self.calls += 1
        raise RuntimeError("boom")


class Record(Step):
    """Remembers the arguments of each call and returns them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Any] = []

    def run_step(self, value: Any = None) -> Any:
        self.seen.append(value)
        return value


def test_chain_passes_results_by_single_predecessor() -> None:
    class Double(Step):
        def run_step(self, x: int) -> int:
            return x * 2

    a, b, c = Const(3, name="a"), Double(name="b"), Double(name="c")
    a >> b >> c
    run = Workflow(outputs=[c]).run()
    assert run.status is Status.SUCCEEDED
    assert run.result == {"c": 12}
    assert [run.steps[n].status for n in "abc"] == [Status.SUCCEEDED] * 3


def test_depends_binds_named_results_and_validates_annotations() -> None:
    class Point(pydantic.BaseModel):
        x: int
        y: int

    class MakePoint(Step):
        def run_step(self) -> Point:
            return Point(x=1, y=2)

    class MakeWords(Step):
        def run_step(self) -> tuple[str, ...]:
            return ("a", "b")

    make_point, make_words = MakePoint(), MakeWords()
    seen: dict[str, Any] = {}

    class Use(Step):
        def run_step(
            self, p: Point = Depends(make_point), words: list[str] = Depends(make_words)
        ) -> int:
            seen["p"], seen["words"] = p, words
            return p.x + p.y

    run = Workflow(outputs=[Use()]).run()
    assert run.status is Status.SUCCEEDED
    assert seen["p"] == Point(x=1, y=2) and isinstance(seen["p"], Point)
    assert seen["words"] == ["a", "b"] and isinstance(seen["words"], list)
    assert run.result == {"Use": 3}
    # Results are stored as JSON data, exactly as a broker would store them.
    assert run.steps["MakePoint"].result == {"x": 1, "y": 2}


def test_binding_prefers_depends_then_inputs_then_predecessor_then_default() -> None:
    source = Const("from-source", name="source")

    class Target(Step):
        def run_step(
            self, dep: str = Depends(source), query: str = "", extra: str = "default"
        ) -> list[str]:
            return [dep, query, extra]

    t = Target(name="t")
    run = Workflow(outputs=[t]).run({"query": "from-input"})
    assert run.result == {"t": ["from-source", "from-input", "default"]}


def test_single_predecessor_fills_the_one_unbound_parameter_rag_style() -> None:
    class Retrieve(Step):
        def run_step(self, query: str) -> list[str]:
            return [f"doc:{query}"]

    class Answer(Step):
        def run_step(self, docs: list[str], query: str) -> str:
            return f"{query}->{docs}"

    retrieve, answer = Retrieve(), Answer()
    retrieve.next(answer)
    run = Workflow(outputs=[answer]).run({"query": "q"})
    assert run.result == {"Answer": "q->['doc:q']"}


def test_unbindable_parameter_fails_the_step_naming_it() -> None:
    class Needs(Step):
        def run_step(self, missing: int) -> int:
            return missing

    run = Workflow(outputs=[Needs()]).run()
    assert run.status is Status.FAILED
    error = run.steps["Needs"].error
    assert error is not None and error.type == "StepBindingError"
    assert "'missing'" in error.message and "'Needs'" in error.message


def test_result_not_matching_consumer_annotation_fails_the_consumer() -> None:
    make = Const("not-a-number", name="make")

    class Consumer(Step):
        def run_step(self, n: int = Depends(make)) -> int:
            return n

    run = Workflow(outputs=[Consumer(name="consumer")]).run()
    assert run.steps["make"].status is Status.SUCCEEDED
    assert run.steps["consumer"].status is Status.FAILED
    assert run.steps["consumer"].error is not None
    assert run.steps["consumer"].error.type == "StepBindingError"


def test_branching_takes_only_the_chosen_label_and_skip_cascades() -> None:
    decide = Const("left", name="decide")
    left, right, after_right = Record(name="left"), Record(name="right"), Record(name="after")
    (decide - "left") >> left
    (decide - "right") >> right
    right >> after_right
    run = Workflow(outputs=[left, after_right]).run()
    assert run.steps["left"].status is Status.SUCCEEDED
    assert run.steps["right"].status is Status.SKIPPED
    assert run.steps["after"].status is Status.SKIPPED
    assert right.seen == [] and after_right.seen == []
    assert run.status is Status.SUCCEEDED
    assert run.result == {"left": "left", "after": None}


def test_next_with_action_is_a_labelled_edge_and_default_is_default() -> None:
    decide = Const("yes", name="decide")
    yes, fallback = Record(name="yes"), Record(name="fallback")
    decide.next(yes, "yes")
    decide.next(fallback, "default")
    run = Workflow(outputs=[yes, fallback]).run()
    assert run.steps["yes"].status is Status.SUCCEEDED
    assert run.steps["fallback"].status is Status.SKIPPED


def test_plain_string_that_is_not_a_label_follows_default_edges() -> None:
    talk = Const("just some text", name="talk")
    nxt, labelled = Record(name="next"), Record(name="labelled")
    talk >> nxt
    (talk - "special") >> labelled
    run = Workflow(outputs=[nxt, labelled]).run()
    assert run.steps["next"].status is Status.SUCCEEDED
    assert nxt.seen == ["just some text"]
    assert run.steps["labelled"].status is Status.SKIPPED


def test_and_join_waits_for_all_and_binds_none_for_a_skipped_parent() -> None:
    decide = Const("a", name="decide")
    a, b = Const(1, name="a"), Const(2, name="b")
    (decide - "a") >> a
    (decide - "b") >> b

    class Join(Step):
        def run_step(self, x: int | None = Depends(a), y: int | None = Depends(b)) -> list[Any]:
            return [x, y]

    run = Workflow(outputs=[Join(name="join")]).run()
    assert run.steps["b"].status is Status.SKIPPED
    assert run.result == {"join": [1, None]}


def test_and_join_with_every_parent_skipped_is_skipped() -> None:
    decide = Const("other", name="decide")
    a, b = Const(1, name="a"), Const(2, name="b")
    (decide - "a") >> a
    (decide - "b") >> b
    join = Record(name="join")
    a >> join
    b >> join
    run = Workflow(outputs=[join]).run()
    assert run.steps["join"].status is Status.SKIPPED
    assert run.status is Status.SUCCEEDED


def test_or_join_runs_exactly_once_with_the_first_result() -> None:
    first, second = Const("first", name="first"), Const("second", name="second")
    calls: list[Any] = []

    class Either(Step):
        def run_step(self, value: str = Depends(first, second)) -> str:
            calls.append(value)
            return value

    run = Workflow(outputs=[Either(name="either")]).run()
    assert calls == ["first"]
    assert run.result == {"either": "first"}
    assert run.steps["second"].status is Status.SUCCEEDED


def test_or_join_runs_when_one_member_fails_and_another_succeeds() -> None:
    bad, good = Boom(name="bad"), Const("good", name="good")

    class Either(Step):
        def run_step(self, value: str = Depends([bad, good])) -> str:
            return value

    run = Workflow(outputs=[Either(name="either")]).run()
    assert run.steps["bad"].status is Status.FAILED
    assert run.steps["either"].status is Status.SUCCEEDED
    assert run.status is Status.SUCCEEDED


def test_or_join_with_all_members_failed_is_cancelled() -> None:
    bad1, bad2 = Boom(name="bad1"), Boom(name="bad2")

    class Either(Step):
        def run_step(self, value: Any = Depends(bad1, bad2)) -> Any:
            return value

    run = Workflow(outputs=[Either(name="either")]).run()
    assert run.steps["either"].status is Status.CANCELLED
    assert run.status is Status.FAILED


def test_or_join_with_all_members_skipped_is_skipped() -> None:
    decide = Const("none", name="decide")
    a, b = Const(1, name="a"), Const(2, name="b")
    (decide - "a") >> a
    (decide - "b") >> b

    class Either(Step):
        def run_step(self, value: Any = Depends(a, b)) -> Any:
            return value

    run = Workflow(outputs=[Either(name="either")]).run()
    assert run.steps["either"].status is Status.SKIPPED


def test_failure_cancels_downstream_and_fails_the_run() -> None:
    bad = Boom(name="bad")
    mid, end = Record(name="mid"), Record(name="end")
    bad >> mid >> end
    side = Const("ok", name="side")
    run = Workflow(outputs=[end, side]).run()
    assert run.steps["bad"].status is Status.FAILED
    assert run.steps["mid"].status is Status.CANCELLED
    assert run.steps["end"].status is Status.CANCELLED
    assert run.steps["side"].status is Status.SUCCEEDED
    assert run.status is Status.FAILED
    assert mid.seen == [] and end.seen == []


def test_failure_does_not_cancel_through_a_satisfied_or_group() -> None:
    bad, good = Boom(name="bad"), Const("good", name="good")

    class Either(Step):
        def run_step(self, value: str = Depends(bad, good)) -> str:
            return value

    either = Either(name="either")
    after = Record(name="after")
    either >> after
    run = Workflow(outputs=[after]).run()
    assert run.steps["after"].status is Status.SUCCEEDED
    assert run.status is Status.SUCCEEDED


def test_failed_non_output_step_does_not_fail_the_run() -> None:
    bad = Boom(name="bad")
    ok = Const(1, name="ok")
    run = Workflow(outputs=[ok], steps=[bad, ok]).run()
    assert run.steps["bad"].status is Status.FAILED
    assert run.status is Status.SUCCEEDED


def test_conditions_skip_the_step_and_cascade() -> None:
    score = Const(0.2, name="score")

    class Publish(Step):
        def run_step(
            self, s: float = Depends(score, condition=Condition(lambda v: v > 0.5))
        ) -> float:
            return s

    publish = Publish(name="publish")
    after = Record(name="after")
    publish >> after
    run = Workflow(outputs=[after]).run()
    assert run.steps["publish"].status is Status.SKIPPED
    assert run.steps["after"].status is Status.SKIPPED
    assert run.status is Status.SUCCEEDED


def test_conditions_that_hold_let_the_step_run() -> None:
    score = Const(0.9, name="score")

    class Publish(Step):
        def run_step(self, s: float = Depends(score, condition=lambda v: v > 0.5)) -> float:
            return s

    run = Workflow(outputs=[Publish(name="publish")]).run()
    assert run.result == {"publish": 0.9}


def test_condition_helpers_combine() -> None:
    cond = Condition.equals("ok") | Condition(lambda v: v == "fine")
    assert cond("ok") and cond("fine") and not cond("bad")
    assert (~Condition.is_truthy())(0)
    assert not (Condition.is_truthy() & Condition.equals(1))(2)


def test_each_run_uses_its_own_inputs() -> None:
    class Echo(Step):
        def run_step(self, word: str) -> str:
            return word

    wf = Workflow(outputs=[Echo()])
    assert wf.run({"word": "one"}).result == {"Echo": "one"}
    assert wf.run({"word": "two"}).result == {"Echo": "two"}
    assert wf.params == {}


def test_concurrent_runs_keep_their_inputs_apart() -> None:
    barrier = threading.Barrier(8)

    class Echo(Step):
        def run_step(self, word: str) -> str:
            barrier.wait(timeout=10)
            return word

    wf = Workflow(outputs=[Echo()])
    results: dict[int, Any] = {}

    def go(i: int) -> None:
        results[i] = wf.run({"word": f"w{i}"}).result

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: {"Echo": f"w{i}"} for i in range(8)}


def test_unserializable_result_fails_the_step() -> None:
    class Bad(Step):
        def run_step(self) -> object:
            return object()

    class NaN(Step):
        def run_step(self) -> float:
            return float("nan")

    class Nul(Step):
        def run_step(self) -> str:
            return "a\x00b"

    for cls in (Bad, NaN, Nul):
        run = Workflow(outputs=[cls()]).run()
        assert run.status is Status.FAILED
        assert run.steps[cls.__name__].error is not None
        assert run.steps[cls.__name__].error.type == "ResultNotSerializableError"


def test_pool_engine_runs_ready_steps_in_parallel() -> None:
    barrier = threading.Barrier(3)

    class Meet(Step):
        def run_step(self) -> bool:
            barrier.wait(timeout=10)  # only returns if three run at once
            return True

    steps = [Meet(name=f"m{i}") for i in range(3)]
    run = Workflow(outputs=steps).run(engine=PoolEngine(3))
    assert run.status is Status.SUCCEEDED
    run2 = PoolEngine(3).run(Workflow(outputs=steps))
    assert run2.status is Status.SUCCEEDED


def test_pool_engine_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PoolEngine(0)


def test_run_result_and_step_state_are_recorded() -> None:
    a = Const(5, name="a")
    run = Workflow(outputs=[a]).run()
    assert a.state is Status.SUCCEEDED
    assert run.steps["a"].attempts == 1
    assert run.finished_at is not None and run.created_at <= run.finished_at
