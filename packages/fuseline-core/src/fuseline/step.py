"""Steps: the units of work a workflow is made of, and the edges between them."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fuseline.depends import Depends
from fuseline.errors import AmbiguousEdgeError, WorkflowDefinitionError
from fuseline.status import Status

if TYPE_CHECKING:
    from fuseline.messages import StepError
    from fuseline.policies.base import StepPolicy

__all__ = ["DEFAULT_LABEL", "AsyncStep", "Edge", "LabelledEdge", "Step"]

DEFAULT_LABEL = "default"
"""The action name of a default edge: ``a.next(b)`` equals ``a.next(b, "default")``."""


@dataclass
class Edge:
    """A directed edge ``source -> target``.

    ``label`` is None for a default edge. ``implicit`` marks edges that
    ``Depends`` created; an explicit labelled edge between the same two steps
    replaces an implicit one, so ``Depends(a)`` plus ``(a - "yes") >> b``
    means "run b when a chooses yes, and give it a's result".
    """

    source: Step
    target: Step
    label: str | None
    implicit: bool = False


class LabelledEdge:
    """The left half of ``(step - "label") >> other``."""

    def __init__(self, source: Step, label: str) -> None:
        self.source = source
        self.label = label

    def __rshift__(self, other: Step) -> Step:
        return self.source.next(other, self.label)


class Step:
    """A unit of work. Subclass it and implement ``run_step``.

    ``run_step`` parameters receive, in order of precedence: the result of a
    step named with ``Depends``; the workflow input of the same name; for a
    step with exactly one predecessor, that predecessor's result when exactly
    one parameter is left unbound; the parameter's own default.

    Args:
        name: Stable name of the step inside its workflow. Defaults to the class
            name (numbered when a workflow holds several steps of one class).
        policies: Step policies, e.g. ``RetryPolicy`` or ``StepTimeoutPolicy``.
    """

    is_async = False

    def __init__(self, *, name: str | None = None, policies: Iterable[StepPolicy] = ()) -> None:
        if name is not None and not _is_text(name):
            raise WorkflowDefinitionError(f"A step name must be a non-empty string, got {name!r}.")
        self._explicit_name = name
        self._assigned_name: str | None = None
        self.policies: list[StepPolicy] = []
        self.outgoing: list[Edge] = []
        self.incoming: list[Edge] = []
        self.state: Status = Status.PENDING
        self.error: StepError | None = None
        self.dependencies: dict[str, Depends] = _depends_of(type(self))
        for parameter, dep in self.dependencies.items():
            self._wire_dependency(parameter, dep)
        for policy in policies:
            self.add_policy(policy)

    # -- naming -----------------------------------------------------------------
    @property
    def name(self) -> str:
        """The step's name: explicit, assigned by its workflow, or its class name."""
        return self._explicit_name or self._assigned_name or type(self).__name__

    @property
    def has_explicit_name(self) -> bool:
        """Whether the name was given to the constructor."""
        return self._explicit_name is not None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- work -------------------------------------------------------------------
    def run_step(self, *args: Any, **kwargs: Any) -> Any:
        """Do the step's work and return its result (JSON-compatible)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_step()")

    def before_run(self) -> None:
        """Lifecycle hook called just before ``run_step`` (after conditions passed)."""

    def after_run(self, result: Any) -> None:
        """Lifecycle hook called after ``run_step`` succeeded, with its result."""

    # -- policies ---------------------------------------------------------------
    def add_policy(self, policy: StepPolicy) -> Step:
        """Attach a step policy and return the step, for chaining."""
        from fuseline.policies.base import StepPolicy

        if not isinstance(policy, StepPolicy):
            raise TypeError(
                f"{policy!r} is not a StepPolicy; attach workflow policies to the Workflow instead"
            )
        policy.attach_to_step(self)
        self.policies.append(policy)
        return self

    # -- edges ------------------------------------------------------------------
    def next(self, other: Step, action: str | None = None) -> Step:
        """Add an edge to ``other``, taken when this step returns ``action``.

        Without ``action`` (or with ``"default"``) the edge is a default edge.
        Returns ``other`` so that calls chain like ``a.next(b).next(c)``.
        """
        if not isinstance(other, Step):
            raise WorkflowDefinitionError(
                f"Step {self.name!r} can only be connected to a Step, got {other!r}."
            )
        if action is not None and not _is_text(action):
            raise WorkflowDefinitionError(
                f"Edge label of step {self.name!r} must be a non-empty string, got {action!r}."
            )
        label = None if action in (None, DEFAULT_LABEL) else action
        self._add_edge(other, label, implicit=False)
        return other

    def __rshift__(self, other: Step) -> Step:
        return self.next(other)

    def __sub__(self, label: str) -> LabelledEdge:
        if not _is_text(label):
            raise WorkflowDefinitionError(
                f"Edge label of step {self.name!r} must be a non-empty string, got {label!r}."
            )
        return LabelledEdge(self, label)

    @property
    def predecessors(self) -> list[Step]:
        """Steps with an edge into this one, in the order the edges were made."""
        return _unique(edge.source for edge in self.incoming)

    @property
    def successors(self) -> list[Step]:
        """Steps this one has an edge to, in the order the edges were made."""
        return _unique(edge.target for edge in self.outgoing)

    def _wire_dependency(self, parameter: str, dep: Depends) -> None:
        seen: set[int] = set()
        for member in dep.steps:
            if not isinstance(member, Step):
                raise WorkflowDefinitionError(
                    f"Parameter {parameter!r} of step {type(self).__name__!r} depends on "
                    f"{member!r}, which is not a Step instance; pass step objects to Depends()."
                )
            if id(member) in seen:
                raise AmbiguousEdgeError(
                    f"Parameter {parameter!r} of step {type(self).__name__!r} lists step "
                    f"{member.name!r} twice in Depends(); list each step once."
                )
            seen.add(id(member))
            member._add_edge(self, None, implicit=True)

    def _add_edge(self, target: Step, label: str | None, *, implicit: bool) -> None:
        if target is self:
            raise WorkflowDefinitionError(f"Step {self.name!r} cannot have an edge to itself.")
        existing = [edge for edge in self.outgoing if edge.target is target]
        for edge in existing:
            if edge.label == label:
                edge.implicit = edge.implicit and implicit
                return
        if not implicit and label is not None:
            # An explicit labelled edge refines the default edge Depends made.
            for edge in existing:
                if edge.implicit and edge.label is None:
                    edge.label = label
                    edge.implicit = False
                    return
        if implicit and existing:
            return  # Depends on a step that already has an explicit edge here.
        edge = Edge(self, target, label, implicit)
        self.outgoing.append(edge)
        target.incoming.append(edge)


class AsyncStep(Step):
    """A step whose ``run_step`` is a coroutine function.

    Async steps run on an event loop: natively under ``Workflow.run_async()``
    and on a worker, and on a private loop under ``Workflow.run()``.
    """

    is_async = True

    async def run_step(self, *args: Any, **kwargs: Any) -> Any:
        """Do the step's work and return its result (JSON-compatible)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_step()")


def _depends_of(cls: type[Step]) -> dict[str, Depends]:
    signature = inspect.signature(cls.run_step)
    return {
        name: param.default
        for name, param in signature.parameters.items()
        if isinstance(param.default, Depends)
    }


def _is_text(value: object) -> bool:
    # Checked at run time: labels and names often come from untyped code.
    return isinstance(value, str) and bool(value.strip())


def _unique(steps: Iterable[Step]) -> list[Step]:
    seen: set[int] = set()
    ordered: list[Step] = []
    for step in steps:
        if id(step) not in seen:
            seen.add(id(step))
            ordered.append(step)
    return ordered
