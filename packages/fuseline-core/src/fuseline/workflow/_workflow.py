"""``Workflow``: a DAG of steps that runs in-process or through a broker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from fuseline.errors import (
    CycleError,
    DuplicateStepNameError,
    InvalidInputError,
    UnknownStepError,
    WorkflowDefinitionError,
)
from fuseline.jsonvalue import to_json_value
from fuseline.policies.base import WorkflowPolicy
from fuseline.step import Step
from fuseline.workflow._execution import execute_step
from fuseline.workflow.rules import RunGraph
from fuseline.workflow.schema import (
    EdgeSchema,
    OrGroupSchema,
    StepSchema,
    WorkflowSchema,
    definition_error,
)

if TYPE_CHECKING:
    from fuseline.engines import PoolEngine
    from fuseline.messages import RunDetails

__all__ = ["Dispatcher", "Workflow"]


class Dispatcher(Protocol):
    """Anything that can start a run of a schema: a broker or a broker client."""

    def dispatch_workflow(
        self, workflow: WorkflowSchema, inputs: dict[str, Any] | None = None
    ) -> str: ...


class Workflow:
    """A DAG of steps.

    Every step connected to ``outputs`` (through edges in either direction)
    belongs to the workflow; pass ``steps`` to list them yourself instead.

    Args:
        outputs: The steps whose results form the run's result.
        steps: The exact steps of the workflow (default: discover them).
        workflow_id: Stable id; defaults to the output step names joined by "+".
            Set it explicitly for anything you deploy.
        version: Bump it whenever the graph or step settings change.
        policies: Workflow policies (``WorkflowPolicy`` instances).
        params: Default workflow inputs, overridden by the inputs of each run.
    """

    def __init__(
        self,
        outputs: Sequence[Step] | Step,
        *,
        steps: Iterable[Step] | None = None,
        workflow_id: str | None = None,
        version: str = "1",
        policies: Iterable[WorkflowPolicy] = (),
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.outputs: list[Step] = [outputs] if isinstance(outputs, Step) else list(outputs)
        if not self.outputs or not all(isinstance(s, Step) for s in self.outputs):
            raise WorkflowDefinitionError("Workflow(outputs=...) needs one or more Step instances.")
        members = _discover(self.outputs) if steps is None else _explicit(self.outputs, steps)
        self.steps: list[Step] = _topological(members)
        _assign_names(self.steps)
        self._by_name: dict[str, Step] = {step.name: step for step in self.steps}
        self.workflow_id = workflow_id or "+".join(step.name for step in self.outputs)
        self.version = version
        self.params: dict[str, Any] = dict(params or {})
        self.policies: list[WorkflowPolicy] = []
        for policy in policies:
            self.add_policy(policy)
        self._graph_cache: tuple[object, WorkflowSchema, RunGraph] | None = None
        self.to_schema()  # checks the definition now rather than at first run

    def __repr__(self) -> str:
        return f"<Workflow {self.workflow_id!r} v{self.version} steps={len(self.steps)}>"

    # -- structure --------------------------------------------------------------
    @property
    def step_map(self) -> dict[str, Step]:
        """The steps by name."""
        return dict(self._by_name)

    def step(self, name: str) -> Step:
        """Return the step called ``name``.

        Raises:
            UnknownStepError: The workflow has no such step.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownStepError(
                f"Workflow {self.workflow_id!r} has no step named {name!r}; "
                f"its steps are {sorted(self._by_name)}."
            ) from None

    def predecessors_of(self, step: Step) -> list[Step]:
        """The direct predecessors of ``step`` within this workflow."""
        return [p for p in step.predecessors if self._by_name.get(p.name) is p]

    def add_policy(self, policy: WorkflowPolicy) -> Workflow:
        """Attach a workflow policy and return the workflow, for chaining."""
        if not isinstance(policy, WorkflowPolicy):
            raise TypeError(f"{policy!r} is not a WorkflowPolicy; attach step policies to steps")
        policy.attach_to_workflow(self)
        self.policies.append(policy)
        return self

    # -- schema -----------------------------------------------------------------
    def to_schema(self) -> WorkflowSchema:
        """Describe the workflow as data: names, edges, OR groups, outputs, settings."""
        return self._schema_and_graph()[0]

    def _schema_and_graph(self) -> tuple[WorkflowSchema, RunGraph]:
        # The graph is fixed at construction; only policies can change later.
        key = tuple(tuple(map(id, step.policies)) for step in self.steps)
        if self._graph_cache is None or self._graph_cache[0] != key:
            try:
                schema = self._build_schema()
            except ValidationError as exc:
                raise definition_error(exc) from None
            self._graph_cache = (key, schema, RunGraph(schema))
        return self._graph_cache[1], self._graph_cache[2]

    def _build_schema(self) -> WorkflowSchema:
        return WorkflowSchema(
            workflow_id=self.workflow_id,
            version=self.version,
            steps=tuple(_step_schema(step) for step in self.steps),
            edges=tuple(
                EdgeSchema(source=step.name, target=edge.target.name, label=edge.label)
                for step in self.steps
                for edge in step.outgoing
            ),
            or_groups=tuple(
                OrGroupSchema(
                    target=step.name,
                    parameter=parameter,
                    members=tuple(member.name for member in dep.steps),
                )
                for step in self.steps
                for parameter, dep in step.dependencies.items()
                if dep.is_or_group
            ),
            outputs=tuple(step.name for step in self.outputs),
        )

    # -- running ----------------------------------------------------------------
    def run(
        self, inputs: Mapping[str, Any] | None = None, *, engine: PoolEngine | None = None
    ) -> RunDetails:
        """Run the workflow in this process and return the finished run.

        Step failures do not raise: they show in the returned run's status and
        step records. Steps run one at a time unless ``engine`` is a
        ``PoolEngine``.
        """
        from fuseline.workflow._runner import run_local

        parallel = 1 if engine is None else engine.workers
        return run_local(self, self._run_inputs(inputs), parallel=parallel)

    async def run_async(self, inputs: Mapping[str, Any] | None = None) -> RunDetails:
        """Run the workflow on the running event loop; ready steps run concurrently."""
        from fuseline.workflow._runner import run_local_async

        return await run_local_async(self, self._run_inputs(inputs))

    def dispatch(
        self, broker_or_client: Dispatcher, inputs: Mapping[str, Any] | None = None
    ) -> str:
        """Start a run on a broker (or through a client) and return its run id."""
        return broker_or_client.dispatch_workflow(self.to_schema(), self._run_inputs(inputs))

    def _run_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        if inputs is not None and not isinstance(inputs, Mapping):
            raise InvalidInputError(
                "Workflow inputs must be a mapping of names to values, "
                f"got {type(inputs).__name__}."
            )
        merged = {**self.params, **(inputs or {})}
        if not all(isinstance(key, str) for key in merged):
            raise InvalidInputError("Workflow input names must be strings.")
        plain: dict[str, Any] = to_json_value(merged, what="workflow inputs")
        return plain

    def _execute_step(
        self,
        step: Step,
        shared: Mapping[Step | str, Any],
        inputs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run one step with its policies, for hand-written workers.

        Args:
            step: A step of this workflow.
            shared: Results of the step's predecessors, keyed by step or name.
            inputs: The run's inputs; defaults to ``self.params``.

        Returns:
            The step's result as JSON data (None unless it succeeded). The
            outcome is left in ``step.state`` (and the error in ``step.error``).
        """
        results = {
            (key.name if isinstance(key, Step) else key): value for key, value in shared.items()
        }
        outcome = execute_step(self, step, results, self.params if inputs is None else inputs)
        step.state = outcome.status
        step.error = outcome.error
        return outcome.result


def _step_schema(step: Step) -> StepSchema:
    fields: dict[str, Any] = {}
    for policy in step.policies:
        fields.update(policy.schema_fields())
    return StepSchema(
        name=step.name,
        kind="async" if step.is_async else "sync",
        policies=tuple(type(policy).__name__ for policy in step.policies),
        **fields,
    )


def _discover(outputs: list[Step]) -> list[Step]:
    """Every step connected to the outputs, in a deterministic order."""
    found: dict[int, Step] = {}
    queue = list(outputs)
    while queue:
        step = queue.pop(0)
        if id(step) in found:
            continue
        found[id(step)] = step
        queue.extend(edge.source for edge in step.incoming)
        queue.extend(edge.target for edge in step.outgoing)
    return list(found.values())


def _explicit(outputs: list[Step], steps: Iterable[Step]) -> list[Step]:
    members = list(dict.fromkeys([*steps, *outputs]))
    inside = {id(step) for step in members}
    for step in members:
        if not isinstance(step, Step):
            raise WorkflowDefinitionError(f"Workflow(steps=...) got {step!r}, which is not a Step.")
        for edge in step.incoming:
            if id(edge.source) not in inside:
                raise UnknownStepError(
                    f"Step {step.name!r} depends on step {edge.source.name!r}, which is not in "
                    "this workflow's steps; add it to steps=[...] or remove the dependency."
                )
        for edge in step.outgoing:
            if id(edge.target) not in inside:
                raise UnknownStepError(
                    f"Step {step.name!r} has an edge to step {edge.target.name!r}, which is not "
                    "in this workflow's steps; add it to steps=[...] or remove the edge."
                )
    return members


def _topological(members: list[Step]) -> list[Step]:
    position = {id(step): index for index, step in enumerate(members)}
    indegree = {id(step): 0 for step in members}
    for step in members:
        for edge in step.outgoing:
            indegree[id(edge.target)] += 1
    ready = sorted((s for s in members if indegree[id(s)] == 0), key=lambda s: position[id(s)])
    ordered: list[Step] = []
    while ready:
        step = ready.pop(0)
        ordered.append(step)
        for target in step.successors:
            indegree[id(target)] -= len([e for e in step.outgoing if e.target is target])
            if indegree[id(target)] == 0:
                ready.append(target)
                ready.sort(key=lambda s: position[id(s)])
    if len(ordered) != len(members):
        stuck = sorted(step.name for step in members if indegree[id(step)] > 0)
        raise CycleError(
            f"The steps {stuck} form a cycle; a workflow must be a DAG. Remove one of the edges."
        )
    return ordered


def _assign_names(steps: list[Step]) -> None:
    explicit: dict[str, Step] = {}
    for step in steps:
        if step.has_explicit_name:
            if step.name in explicit:
                raise DuplicateStepNameError(
                    f"Two steps of this workflow are named {step.name!r}; names must be unique."
                )
            explicit[step.name] = step
    by_class: dict[str, list[Step]] = {}
    for step in steps:
        if not step.has_explicit_name and step._assigned_name is None:
            by_class.setdefault(type(step).__name__, []).append(step)
    taken = set(explicit) | {s.name for s in steps if s._assigned_name is not None}
    for class_name, group in by_class.items():
        if len(group) == 1 and class_name not in taken:
            taken.add(class_name)
            continue
        number = 0
        for step in group:
            number += 1
            while f"{class_name}_{number}" in taken:
                number += 1
            step._assigned_name = f"{class_name}_{number}"
            taken.add(step._assigned_name)
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DuplicateStepNameError(
            f"Steps of this workflow share the names {duplicates}; give them explicit names "
            "with Step(name=...)."
        )
