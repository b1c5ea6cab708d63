"""The execution rules: which step runs next, which is skipped or cancelled.

This module is the one definition of the semantics in DESIGN.md section 3. It
is pure (no I/O, no clocks, no threads): the in-process runner and every
broker hand it what they know about a run and apply what it decides.

Vocabulary:

* An edge is *taken* when its source SUCCEEDED and chose it (a ``str`` result
  equal to the edge's label chooses the labelled edges, anything else chooses
  the default edges); *skipped* when its source SUCCEEDED and chose another
  edge, or was SKIPPED; *failed* when its source FAILED or was CANCELLED.
* A step's *requirements* are its plain incoming edges, one requirement each,
  and its OR groups, one requirement per group. An OR group is taken as soon
  as one member edge is taken.
* A step is READY when every requirement is resolved, none failed and at least
  one was taken; SKIPPED when every requirement was skipped; CANCELLED as soon
  as one requirement failed. A step without requirements is ready at start.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fuseline.status import Status
from fuseline.workflow.schema import WorkflowSchema

__all__ = [
    "Decision",
    "EdgeState",
    "ReadyStep",
    "RunGraph",
    "Settlement",
    "StepFacts",
    "choose_branch",
    "decide",
    "run_status",
    "settle",
    "start",
]


class EdgeState(enum.Enum):
    """What became of one edge."""

    PENDING = "pending"
    TAKEN = "taken"
    SKIPPED = "skipped"
    FAILED = "failed"


class Decision(enum.Enum):
    """What a not-yet-started step should do now."""

    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"
    CANCEL = "cancel"


@dataclass(frozen=True)
class StepFacts:
    """What the rules need to know about one step of one run.

    Attributes:
        status: The step's status.
        branch: For a SUCCEEDED step, the label its result chose (None: default edges).
        queued: For a PENDING step, whether it was already made ready.
        order: Completion order within the run (lower finished earlier), used
            to let the first OR-group member win; None when unknown.
    """

    status: Status = Status.PENDING
    branch: str | None = None
    queued: bool = False
    order: int | None = None


PENDING_FACTS = StepFacts()


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    label: str | None


@dataclass(frozen=True)
class _Requirement:
    edges: tuple[_Edge, ...]
    group: str | None  # the parameter of an OR group, None for a plain edge


@dataclass(frozen=True)
class ReadyStep:
    """A step the caller must enqueue.

    Attributes:
        name: The step's name.
        or_winners: For each OR-group parameter, the member whose result it binds.
    """

    name: str
    or_winners: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Settlement:
    """The consequences of some steps finishing, to apply in one go."""

    ready: list[ReadyStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


class RunGraph:
    """A schema's graph, indexed for the rules. Build once per schema and reuse."""

    def __init__(self, schema: WorkflowSchema) -> None:
        self.schema = schema
        self.step_names: tuple[str, ...] = tuple(schema.step_names)
        self.outputs: tuple[str, ...] = schema.outputs
        group_of: dict[tuple[str, str], str] = {}
        for group in schema.or_groups:
            for member in group.members:
                group_of[(member, group.target)] = group.parameter
        outgoing: dict[str, list[_Edge]] = {name: [] for name in self.step_names}
        plain: dict[str, list[_Requirement]] = {name: [] for name in self.step_names}
        grouped: dict[str, dict[str, list[_Edge]]] = {name: {} for name in self.step_names}
        for e in schema.edges:
            edge = _Edge(e.source, e.target, e.label)
            outgoing[e.source].append(edge)
            parameter = group_of.get((e.source, e.target))
            if parameter is None:
                plain[e.target].append(_Requirement((edge,), None))
            else:
                grouped[e.target].setdefault(parameter, []).append(edge)
        self._outgoing = {name: tuple(edges) for name, edges in outgoing.items()}
        self._requirements = {
            name: tuple(plain[name])
            + tuple(_Requirement(tuple(edges), param) for param, edges in grouped[name].items())
            for name in self.step_names
        }
        self.labels: dict[str, frozenset[str]] = {
            name: frozenset(e.label for e in edges if e.label is not None)
            for name, edges in self._outgoing.items()
        }
        self.successors: dict[str, tuple[str, ...]] = {
            name: tuple(dict.fromkeys(e.target for e in edges))
            for name, edges in self._outgoing.items()
        }
        self.predecessors: dict[str, tuple[str, ...]] = {
            name: tuple(dict.fromkeys(e.source for r in reqs for e in r.edges))
            for name, reqs in self._requirements.items()
        }
        self.roots: tuple[str, ...] = tuple(n for n in self.step_names if not self._requirements[n])

    def result_sources(self, name: str, or_winners: Mapping[str, str]) -> list[str]:
        """The steps whose results a step receives: plain predecessors and OR winners."""
        sources = [r.edges[0].source for r in self._requirements[name] if r.group is None]
        sources.extend(or_winners.values())
        return list(dict.fromkeys(sources))


def choose_branch(graph: RunGraph, step: str, result: Any) -> str | None:
    """The label a SUCCEEDED step's ``result`` chooses, or None for its default edges."""
    if isinstance(result, str) and result in graph.labels[step]:
        return result
    return None


def _edge_state(edge: _Edge, facts: Mapping[str, StepFacts]) -> EdgeState:
    source = facts.get(edge.source, PENDING_FACTS)
    status = source.status
    if status is Status.SUCCEEDED:
        return EdgeState.TAKEN if source.branch == edge.label else EdgeState.SKIPPED
    if status is Status.SKIPPED:
        return EdgeState.SKIPPED
    if status in (Status.FAILED, Status.CANCELLED):
        return EdgeState.FAILED
    return EdgeState.PENDING


def _requirement_state(
    req: _Requirement, facts: Mapping[str, StepFacts]
) -> tuple[EdgeState, str | None]:
    if req.group is None:
        return _edge_state(req.edges[0], facts), req.edges[0].source
    states = [(_edge_state(edge, facts), edge.source) for edge in req.edges]
    taken = [source for state, source in states if state is EdgeState.TAKEN]
    if taken:
        # The member that finished first wins; declaration order breaks ties.
        rank = {source: index for index, source in enumerate(taken)}

        def first(source: str) -> tuple[bool, int, int]:
            order = facts.get(source, PENDING_FACTS).order
            return (order is None, order or 0, rank[source])

        return EdgeState.TAKEN, min(taken, key=first)
    kinds = {state for state, _ in states}
    if EdgeState.PENDING in kinds:
        return EdgeState.PENDING, None
    if EdgeState.FAILED in kinds:
        return EdgeState.FAILED, None
    return EdgeState.SKIPPED, None


def decide(
    graph: RunGraph, step: str, facts: Mapping[str, StepFacts]
) -> tuple[Decision, dict[str, str]]:
    """Decide what a step that has not started should do, given the run's facts.

    Returns:
        The decision and, for READY, the winning member of each OR group.
    """
    requirements = graph._requirements[step]
    if not requirements:
        return Decision.READY, {}
    winners: dict[str, str] = {}
    any_taken = False
    waiting = False
    for req in requirements:
        state, winner = _requirement_state(req, facts)
        if state is EdgeState.FAILED:
            return Decision.CANCEL, {}
        if state is EdgeState.PENDING:
            waiting = True
        elif state is EdgeState.TAKEN:
            any_taken = True
            if req.group is not None and winner is not None:
                winners[req.group] = winner
    if waiting:
        return Decision.WAIT, {}
    return (Decision.READY, winners) if any_taken else (Decision.SKIP, {})


def start(graph: RunGraph) -> Settlement:
    """What to do when a run is created: enqueue the steps without requirements."""
    return Settlement(ready=[ReadyStep(name) for name in graph.roots])


def settle(graph: RunGraph, facts: Mapping[str, StepFacts], finished: Iterable[str]) -> Settlement:
    """Work out what follows from the steps in ``finished`` reaching their state.

    ``facts`` must already hold the new states of ``finished``. Skips and
    cancellations cascade; the returned settlement lists every step whose
    state the caller must change, each exactly once.
    """
    overlay: dict[str, StepFacts] = dict(facts)
    settlement = Settlement()
    pending = list(finished)
    while pending:
        source = pending.pop(0)
        for target in graph.successors[source]:
            current = overlay.get(target, PENDING_FACTS)
            if current.status is not Status.PENDING or current.queued:
                continue
            decision, winners = decide(graph, target, overlay)
            if decision is Decision.READY:
                overlay[target] = StepFacts(Status.PENDING, queued=True)
                settlement.ready.append(ReadyStep(target, winners))
            elif decision is Decision.SKIP:
                overlay[target] = StepFacts(Status.SKIPPED)
                settlement.skipped.append(target)
                pending.append(target)
            elif decision is Decision.CANCEL:
                overlay[target] = StepFacts(Status.CANCELLED)
                settlement.cancelled.append(target)
                pending.append(target)
    return settlement


def cancel_run(graph: RunGraph, facts: Mapping[str, StepFacts]) -> list[str]:
    """Steps to mark CANCELLED when a user cancels a run: every PENDING one.

    RUNNING steps are left to their workers, who learn of the cancellation at
    their next heartbeat or report.
    """
    return [
        name for name in graph.step_names if facts.get(name, PENDING_FACTS).status is Status.PENDING
    ]


def run_status(
    graph: RunGraph, facts: Mapping[str, StepFacts], *, cancel_requested: bool = False
) -> Status:
    """The run's status: PENDING/RUNNING until no step is, then its final status."""
    statuses = [facts.get(name, PENDING_FACTS).status for name in graph.step_names]
    if any(s is Status.RUNNING for s in statuses):
        return Status.RUNNING
    if any(s is Status.PENDING for s in statuses):
        started = any(s is not Status.PENDING for s in statuses)
        return Status.RUNNING if started else Status.PENDING
    if cancel_requested:
        return Status.CANCELLED
    for output in graph.outputs:
        if facts.get(output, PENDING_FACTS).status in (Status.FAILED, Status.CANCELLED):
            return Status.FAILED
    return Status.SUCCEEDED
