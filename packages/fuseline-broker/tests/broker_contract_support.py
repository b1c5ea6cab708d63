"""Helpers of the broker contract suite: backends, schemas, a hand-driven worker.

The contract tests drive steps by hand (claim, report) so that they decide the
order in which things happen; nothing here runs user code. Every wait polls a
condition until a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_server_support
import pytest

from fuseline.broker import MemoryBroker, PostgresBroker, SQLiteBroker, StorageBroker
from fuseline.messages import StepAssignment, StepError, StepReport
from fuseline.status import Status
from fuseline.workflow import WorkflowSchema

Edge = tuple[str, str] | tuple[str, str, str]
"""``(source, target)`` for a default edge, ``(source, target, label)`` for a labelled one."""


def schema(
    workflow_id: str,
    edges: Iterable[Edge] = (),
    *,
    steps: Sequence[str] = (),
    or_groups: Iterable[tuple[str, str, Sequence[str]]] = (),
    outputs: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    version: str = "1",
) -> WorkflowSchema:
    """A schema from a compact description.

    Steps are named by ``steps`` and by the edges, in order of appearance. An
    OR group ``(target, parameter, members)`` gets its member edges added.
    Outputs default to the steps without outgoing edges. ``settings`` holds
    extra ``StepSchema`` fields per step (``timeout_seconds``, ``retry``...).
    """
    edge_list: list[dict[str, Any]] = []
    names: list[str] = list(steps)
    groups: list[dict[str, Any]] = []

    def add_edge(source: str, target: str, label: str | None) -> None:
        for name in (source, target):
            if name not in names:
                names.append(name)
        edge = {"source": source, "target": target, "label": label}
        if edge not in edge_list:
            edge_list.append(edge)

    for edge in edges:
        add_edge(edge[0], edge[1], edge[2] if len(edge) == 3 else None)
    for target, parameter, members in or_groups:
        for member in members:
            add_edge(member, target, None)
        groups.append({"target": target, "parameter": parameter, "members": list(members)})
    if outputs is None:
        sources = {edge["source"] for edge in edge_list}
        outputs = [name for name in names if name not in sources]
    return WorkflowSchema.model_validate(
        {
            "workflow_id": workflow_id,
            "version": version,
            "steps": [{"name": name, **(settings or {}).get(name, {})} for name in names],
            "edges": edge_list,
            "or_groups": groups,
            "outputs": list(outputs),
        }
    )


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 15.0, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    return http_server_support.wait_until(condition, timeout, what, interval)


# -- backends ---------------------------------------------------------------------------


@dataclass
class Backend:
    """Where a test's brokers keep their state; ``open`` may be called again to reopen it.

    Reopening the memory backend gives a new, empty broker: only ``durable``
    backends keep state across brokers.
    """

    name: str
    tmp_path: Path
    postgres_url: str | None = None
    opened: list[StorageBroker] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        """Whether a second broker opened on this backend sees the first one's state."""
        return self.name != "memory"

    def open(self, **options: Any) -> StorageBroker:
        """A new broker on this backend; the background sweeper is off unless asked for."""
        options.setdefault("sweep_interval", 0)
        broker: StorageBroker
        if self.name == "memory":
            broker = MemoryBroker(**options)
        elif self.name == "sqlite":
            broker = SQLiteBroker(self.tmp_path / "broker.sqlite3", **options)
        else:
            assert self.postgres_url is not None
            broker = PostgresBroker(self.postgres_url, **options)
        self.opened.append(broker)
        return broker

    def close_all(self) -> None:
        """Close every broker this backend opened (closing twice is harmless)."""
        for broker in self.opened:
            broker.close()


def _backend_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name: str = request.param
    url = request.getfixturevalue("postgres_url") if name == "postgres" else None
    backend = Backend(name, tmp_path, url)
    try:
        yield backend
    finally:
        backend.close_all()


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each storage backend in turn (PostgreSQL through the ``postgres_url`` fixture)."""
    yield from _backend_for(request, tmp_path)


@pytest.fixture(params=[p for p in BACKENDS if p.values[0] != "memory"])
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backends whose state outlives the broker object."""
    yield from _backend_for(request, tmp_path)


@pytest.fixture
def broker(backend: Backend) -> StorageBroker:
    """A broker over each backend in turn."""
    return backend.open()


# -- a worker driven by hand -------------------------------------------------------------


class Fail:
    """An outcome for :meth:`HandWorker.drive`: report the step FAILED."""

    def __init__(self, message: str = "boom") -> None:
        self.message = message


class HandWorker:
    """A registered worker whose claims and reports the test makes one by one."""

    def __init__(
        self, broker: StorageBroker, schemas: Sequence[WorkflowSchema], name: str | None = None
    ) -> None:
        self.broker = broker
        self.worker_id = broker.register_worker(list(schemas), name=name)

    @classmethod
    def resume(cls, broker: StorageBroker, worker_id: str) -> HandWorker:
        """The already registered worker ``worker_id``, talking to ``broker``."""
        worker = cls.__new__(cls)
        worker.broker, worker.worker_id = broker, worker_id
        return worker

    def claim(self, wait: float = 0.0) -> StepAssignment | None:
        """The next ready step, if any."""
        return self.broker.get_step(self.worker_id, wait=wait)

    def claim_all(self) -> list[StepAssignment]:
        """Every step ready now."""
        claimed: list[StepAssignment] = []
        while batch := self.broker.get_steps(self.worker_id, max_steps=50):
            claimed.extend(batch)
        return claimed

    def claim_named(self) -> dict[str, StepAssignment]:
        """Every step ready now, by step name (for tests with a single run)."""
        claimed = self.claim_all()
        by_name = {a.step_name: a for a in claimed}
        assert len(by_name) == len(claimed), "one run's step was handed out twice"
        return by_name

    @staticmethod
    def report_of(
        assignment: StepAssignment,
        state: Status,
        result: Any = None,
        *,
        error: StepError | None = None,
        token: str | bool | None = True,
    ) -> StepReport:
        """The report on ``assignment``; ``token`` True sends its lease token, else the value."""
        return StepReport(
            workflow_id=assignment.workflow_id,
            instance_id=assignment.instance_id,
            step_name=assignment.step_name,
            state=state,
            result=result,
            error=error,
            lease_token=assignment.lease_token if token is True else (token or None),
        )

    def report(
        self,
        assignment: StepAssignment,
        state: Status,
        result: Any = None,
        *,
        error: StepError | None = None,
        token: str | bool | None = True,
        claim_next: bool = False,
    ) -> StepAssignment | None:
        """Report ``assignment`` (see :meth:`report_of`)."""
        report = self.report_of(assignment, state, result, error=error, token=token)
        return self.broker.report_step(self.worker_id, report, claim_next=claim_next)

    def succeed(self, assignment: StepAssignment, result: Any = None) -> None:
        """Report the step SUCCEEDED with ``result``."""
        assert self.report(assignment, Status.SUCCEEDED, result) is None

    def fail(self, assignment: StepAssignment, message: str = "boom") -> None:
        """Report the step FAILED."""
        error = StepError(type="RuntimeError", message=message)
        assert self.report(assignment, Status.FAILED, error=error) is None

    def drive(
        self, outcomes: Mapping[str, Any] | None = None, *, limit: int = 1000
    ) -> list[StepAssignment]:
        """Run every step that is or becomes ready, one at a time; return them in order.

        A step's outcome is ``outcomes[name]``: a :class:`Fail`, a callable
        given the assignment, or a plain result; by default its own name.
        """
        handled: list[StepAssignment] = []
        while (assignment := self.claim()) is not None:
            assert len(handled) < limit, "the run never ran out of steps"
            outcome = (outcomes or {}).get(assignment.step_name, assignment.step_name)
            if isinstance(outcome, Fail):
                self.fail(assignment, outcome.message)
            else:
                self.succeed(assignment, outcome(assignment) if callable(outcome) else outcome)
            handled.append(assignment)
        return handled


def statuses(broker: StorageBroker, run_id: str) -> dict[str, Status]:
    """Each step's status in the run."""
    return {name: step.status for name, step in broker.get_run(run_id).steps.items()}


def snapshot(broker: StorageBroker) -> dict[str, Any]:
    """Everything a client can read from the broker, to compare before and after a call.

    Workers' ``last_seen_at`` is left out: hearing from a worker is allowed to
    move it.
    """
    runs = broker.list_runs(limit=1000)
    assert runs.next_cursor is None
    return {
        "runs": [broker.get_run(run.run_id).model_dump() for run in runs.items],
        "workflows": [schema.model_dump() for schema in broker.list_workflows()],
        "workers": [
            (worker.worker_id, worker.name, worker.workflows) for worker in broker.list_workers()
        ],
    }
