"""Schemas: round trip, determinism, names, validation, compatibility."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest

from fuseline import Depends, Step, Workflow
from fuseline.errors import (
    AmbiguousEdgeError,
    CycleError,
    DuplicateStepNameError,
    ResultNotSerializableError,
    SchemaConflictError,
    UnknownStepError,
    WorkflowDefinitionError,
)
from fuseline.policies import RetryPolicy, StepTimeoutPolicy
from fuseline.workflow import WorkflowSchema

WORKFLOW_MODULE = textwrap.dedent(
    """
    from fuseline import Depends, Step, Workflow
    from fuseline.policies import RetryPolicy, StepTimeoutPolicy

    class Fetch(Step):
        def run_step(self, url: str) -> str:
            return url

    class Parse(Step):
        def run_step(self, text: str) -> list[str]:
            return text.split()

    fetch_a, fetch_b = Fetch(policies=[StepTimeoutPolicy(3)]), Fetch()

    class Merge(Step):
        def run_step(self, first: str = Depends(fetch_a, fetch_b)) -> str:
            return first

    merge = Merge(policies=[RetryPolicy(2, wait=0.5, backoff=2)])
    parse = Parse()
    merge >> parse
    (parse - "empty") >> Parse(name="Fallback")
    workflow = Workflow(outputs=[parse], version="7")
    """
)


def test_schema_json_round_trips_exactly(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(WORKFLOW_MODULE, "wf", "exec"), namespace)  # noqa: S102 - test fixture code
    schema = namespace["workflow"].to_schema()
    assert WorkflowSchema.model_validate_json(schema.model_dump_json()) == schema
    assert schema.version == "7"
    assert [s.name for s in schema.steps] == ["Fetch_1", "Fetch_2", "Merge", "Parse", "Fallback"]
    assert schema.or_groups[0].members == ("Fetch_1", "Fetch_2")
    assert schema.or_groups[0].parameter == "first"
    assert {(e.source, e.target, e.label) for e in schema.edges} >= {("Parse", "Fallback", "empty")}
    assert schema.step("Merge").max_attempts == 3
    assert schema.step("Fetch_1").timeout_seconds == 3


def test_schema_is_identical_across_processes(tmp_path: Path) -> None:
    (tmp_path / "wfmod.py").write_text(WORKFLOW_MODULE)
    code = "import wfmod; print(wfmod.workflow.to_schema().model_dump_json())"
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["workflow_id"] == "Parse"


def test_explicit_names_and_ids() -> None:
    class S(Step):
        def run_step(self) -> None:
            return None

    wf = Workflow(outputs=[S(name="first")], workflow_id="my-flow", version="2")
    schema = wf.to_schema()
    assert schema.key == ("my-flow", "2")
    assert schema.step_names == ["first"]
    assert wf.step("first").name == "first"
    with pytest.raises(UnknownStepError):
        wf.step("nope")


class Noop(Step):
    def run_step(self) -> None:
        return None


def test_duplicate_explicit_names_are_rejected() -> None:
    a, b = Noop(name="same"), Noop(name="same")
    a >> b
    with pytest.raises(DuplicateStepNameError, match="same"):
        Workflow(outputs=[b])


def test_cycles_are_rejected_with_the_steps_named() -> None:
    a, b, c = Noop(name="a"), Noop(name="b"), Noop(name="c")
    a >> b >> c >> a
    with pytest.raises(CycleError, match="'a'"):
        Workflow(outputs=[c])


def test_self_edges_and_bad_labels_are_rejected() -> None:
    a = Noop(name="a")
    with pytest.raises(WorkflowDefinitionError):
        a >> a
    with pytest.raises(WorkflowDefinitionError):
        a - ""
    with pytest.raises(WorkflowDefinitionError):
        a.next("b")  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError):
        Noop(name="")


def test_depends_on_a_non_step_is_rejected_naming_step_and_parameter() -> None:
    good = Noop(name="good")

    class Mixed(Step):
        def run_step(self, v: Any = Depends(good, "not a step")) -> Any:  # type: ignore[arg-type]
            return v

    with pytest.raises(WorkflowDefinitionError, match=r"'v'.*'Mixed'"):
        Mixed()


def test_depends_listing_a_step_twice_is_ambiguous() -> None:
    good = Noop(name="good")

    class Twice(Step):
        def run_step(self, v: Any = Depends(good, good)) -> Any:
            return v

    with pytest.raises(AmbiguousEdgeError):
        Twice()


def test_or_member_with_an_extra_edge_is_ambiguous() -> None:
    a, b = Noop(name="a"), Noop(name="b")

    class Either(Step):
        def run_step(self, v: Any = Depends(a, b)) -> Any:
            return v

    either = Either(name="either")
    (a - "x") >> either  # refines the implicit edge: still fine
    Workflow(outputs=[either])
    a >> either  # a second edge from an OR member: ambiguous
    with pytest.raises(AmbiguousEdgeError, match="'a'"):
        Workflow(outputs=[either])


def test_depends_on_a_step_outside_an_explicit_step_list() -> None:
    outside = Noop(name="outside")

    class Inner(Step):
        def run_step(self, v: Any = Depends(outside)) -> Any:
            return v

    inner = Inner(name="inner")
    with pytest.raises(UnknownStepError, match="'outside'"):
        Workflow(outputs=[inner], steps=[inner])


def test_discovery_includes_steps_connected_downstream() -> None:
    a, out, notify = Noop(name="a"), Noop(name="out"), Noop(name="notify")
    a >> out
    a >> notify
    assert {s.name for s in Workflow(outputs=[out]).steps} == {"a", "out", "notify"}


def test_malformed_schema_data_is_rejected() -> None:
    base: dict[str, Any] = {
        "workflow_id": "w",
        "steps": [{"name": "a"}, {"name": "b"}],
        "edges": [{"source": "a", "target": "b"}],
        "outputs": ["b"],
    }
    WorkflowSchema.model_validate(base)
    cases = [
        {**base, "edges": [{"source": "a", "target": "zz"}]},
        {**base, "steps": [{"name": "a"}, {"name": "a"}]},
        {**base, "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]},
        {**base, "outputs": ["nope"]},
        {**base, "unknown_field": 1},
        {**base, "or_groups": [{"target": "b", "parameter": "p", "members": ["a", "zz"]}]},
        {**base, "steps": []},
    ]
    for case in cases:
        with pytest.raises(pydantic.ValidationError):
            WorkflowSchema.model_validate(case)


def test_compatibility_check_says_to_bump_the_version() -> None:
    a = Noop(name="a")
    one = Workflow(outputs=[a], workflow_id="w").to_schema()
    b = Noop(name="a", policies=[RetryPolicy(3)])
    other = Workflow(outputs=[b], workflow_id="w").to_schema()
    assert one.is_compatible_with(Workflow(outputs=[Noop(name="a")], workflow_id="w").to_schema())
    assert not one.is_compatible_with(other)
    with pytest.raises(SchemaConflictError, match="Bump"):
        one.ensure_compatible_with(other)


def test_schema_reflects_policies_added_after_construction() -> None:
    step = Noop(name="s")
    wf = Workflow(outputs=[step])
    assert wf.to_schema().step("s").timeout_seconds is None
    step.add_policy(StepTimeoutPolicy(2))
    assert wf.to_schema().step("s").timeout_seconds == 2


def test_dispatch_hands_the_schema_and_json_inputs_to_the_broker() -> None:
    calls: list[tuple[WorkflowSchema, dict[str, Any] | None]] = []

    class FakeBroker:
        def dispatch_workflow(
            self, workflow: WorkflowSchema, inputs: dict[str, Any] | None = None
        ) -> str:
            calls.append((workflow, inputs))
            return "run-1"

    wf = Workflow(outputs=[Noop(name="n")], workflow_id="d", params={"a": 1})
    assert wf.dispatch(FakeBroker(), {"b": (1, 2)}) == "run-1"
    assert calls == [(wf.to_schema(), {"a": 1, "b": [1, 2]})]
    with pytest.raises(ResultNotSerializableError):
        wf.dispatch(FakeBroker(), {"bad": object()})
    assert len(calls) == 1
