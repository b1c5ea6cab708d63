"""``WorkflowSchema``: the data a broker needs to know about a workflow.

A schema holds names, edges and policy settings, never code. Workers keep the
Python ``Workflow`` objects; brokers and clients only ever see schemas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fuseline.errors import (
    AmbiguousEdgeError,
    CycleError,
    DuplicateStepNameError,
    FuselineError,
    InvalidInputError,
    SchemaConflictError,
    UnknownStepError,
    WorkflowDefinitionError,
)

__all__ = [
    "EdgeSchema",
    "OrGroupSchema",
    "RetrySchema",
    "StepSchema",
    "WorkflowSchema",
    "definition_error",
]

_NAME = Field(min_length=1, max_length=200)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySchema(_Strict):
    """How a step is retried: the worker applies it; the broker reads the limits."""

    max_retries: int = Field(ge=0, le=1000)
    wait: float = Field(default=0.0, ge=0, le=86400)
    backoff: float = Field(default=1.0, ge=1.0, le=100)
    max_wait: float | None = Field(default=None, ge=0, le=86400)
    jitter: float = Field(default=0.0, ge=0, le=86400)


class StepSchema(_Strict):
    """One step: its stable name and the policy settings the broker uses."""

    name: str = _NAME
    kind: Literal["sync", "async"] = "sync"
    timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 86400)
    max_attempts: int = Field(default=1, ge=1, le=1001)
    retry: RetrySchema | None = None
    policies: tuple[str, ...] = ()


class EdgeSchema(_Strict):
    """An edge; ``label`` None marks a default edge."""

    source: str = _NAME
    target: str = _NAME
    label: str | None = Field(default=None, min_length=1, max_length=200)


class OrGroupSchema(_Strict):
    """``Depends(a, b, ...)`` on ``target``'s parameter ``parameter``."""

    target: str = _NAME
    parameter: str = _NAME
    members: tuple[str, ...] = Field(min_length=2)


class WorkflowSchema(_Strict):
    """A workflow graph, keyed by ``(workflow_id, version)``.

    The JSON form round-trips exactly:
    ``WorkflowSchema.model_validate_json(s.model_dump_json()) == s``.
    Constructing a schema checks the graph (names, edges, OR groups, cycles)
    and raises a :class:`~fuseline.errors.WorkflowDefinitionError` subclass
    (wrapped in pydantic's ``ValidationError`` when validating raw data).
    """

    workflow_id: str = _NAME
    version: str = Field(default="1", min_length=1, max_length=100)
    steps: tuple[StepSchema, ...] = Field(min_length=1)
    edges: tuple[EdgeSchema, ...] = ()
    or_groups: tuple[OrGroupSchema, ...] = ()
    outputs: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowSchema:
        check_graph(self)
        return self

    @property
    def key(self) -> tuple[str, str]:
        """``(workflow_id, version)``: what the broker stores the schema under."""
        return (self.workflow_id, self.version)

    @property
    def step_names(self) -> list[str]:
        """The step names, in schema order."""
        return [step.name for step in self.steps]

    def step(self, name: str) -> StepSchema:
        """Return the step called ``name``.

        Raises:
            UnknownStepError: No such step.
        """
        for step in self.steps:
            if step.name == name:
                return step
        raise UnknownStepError(f"Workflow {self.workflow_id!r} has no step named {name!r}.")

    def is_compatible_with(self, other: WorkflowSchema) -> bool:
        """Whether ``other`` describes the same graph and settings under the same key."""
        return self == other

    def ensure_compatible_with(self, other: WorkflowSchema) -> None:
        """Raise unless ``other`` may be stored under the same key as this schema.

        Raises:
            SchemaConflictError: Same id and version, different graph or settings.
        """
        if self.key != other.key:
            raise SchemaConflictError(
                f"Schemas {self.key} and {other.key} have different keys; compare like with like."
            )
        if not self.is_compatible_with(other):
            raise SchemaConflictError(
                f"Workflow {self.workflow_id!r} version {self.version!r} is already registered "
                "with a different graph or different step settings. Bump the workflow's version "
                "(Workflow(..., version=...)) to register the new definition.",
                details={"workflow_id": self.workflow_id, "version": self.version},
            )


def definition_error(exc: ValidationError) -> FuselineError:
    """The Fuseline error behind a schema ``ValidationError``.

    Graph problems come back as their own class (``CycleError``...); any other
    problem (missing fields, wrong types) as ``InvalidInputError``.
    """
    for detail in exc.errors(include_url=False):
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, FuselineError):
            return cause
    return InvalidInputError(f"Invalid workflow schema: {exc}")


def check_graph(schema: WorkflowSchema) -> None:
    """Check that ``schema`` describes a valid DAG; raise a definition error if not."""
    names = [step.name for step in schema.steps]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DuplicateStepNameError(
                f"Workflow {schema.workflow_id!r} has two steps named {name!r}; "
                "give one of them another name."
            )
        seen.add(name)

    def known(name: str, where: str) -> None:
        if name not in seen:
            raise UnknownStepError(
                f"{where} of workflow {schema.workflow_id!r} names step {name!r}, "
                "which is not one of its steps."
            )

    pairs: dict[tuple[str, str], list[EdgeSchema]] = {}
    for edge in schema.edges:
        known(edge.source, "An edge")
        known(edge.target, "An edge")
        if edge.source == edge.target:
            raise WorkflowDefinitionError(f"Step {edge.source!r} has an edge to itself.")
        same = pairs.setdefault((edge.source, edge.target), [])
        if edge in same:
            raise AmbiguousEdgeError(
                f"The edge {edge.source!r} -> {edge.target!r} (label {edge.label!r}) "
                "is listed twice; list it once."
            )
        same.append(edge)
    for output in schema.outputs:
        known(output, "The outputs")
    if len(set(schema.outputs)) != len(schema.outputs):
        raise AmbiguousEdgeError(f"Workflow {schema.workflow_id!r} lists an output twice.")

    grouped: set[tuple[str, str]] = set()
    parameters: set[tuple[str, str]] = set()
    for group in schema.or_groups:
        known(group.target, "An OR group")
        if (group.target, group.parameter) in parameters:
            raise AmbiguousEdgeError(
                f"Parameter {group.parameter!r} of step {group.target!r} has two OR groups."
            )
        parameters.add((group.target, group.parameter))
        for member in group.members:
            known(member, "An OR group")
            edges = pairs.get((member, group.target), [])
            if len(edges) != 1 or (member, group.target) in grouped:
                raise AmbiguousEdgeError(
                    f"Step {member!r} must have exactly one edge to {group.target!r} and belong "
                    f"to one OR group of it (parameter {group.parameter!r}); it has "
                    f"{len(edges)} edge(s). Remove the extra edges or Depends entries."
                )
            grouped.add((member, group.target))
    _check_acyclic(names, ((e.source, e.target) for e in schema.edges))


def _check_acyclic(names: list[str], edges: Iterable[tuple[str, str]]) -> None:
    successors: dict[str, list[str]] = {name: [] for name in names}
    indegree = dict.fromkeys(names, 0)
    for source, target in edges:
        successors[source].append(target)
        indegree[target] += 1
    ready = [name for name in names if indegree[name] == 0]
    visited = 0
    while ready:
        name = ready.pop()
        visited += 1
        for target in successors[name]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    if visited != len(names):
        stuck = sorted(name for name, degree in indegree.items() if degree > 0)
        raise CycleError(
            f"The steps {stuck} form a cycle; a workflow must be a DAG. Remove one of the edges."
        )
