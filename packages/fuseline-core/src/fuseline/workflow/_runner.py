"""The in-process runner behind ``Workflow.run``, ``run_async`` and ``PoolEngine``.

It keeps a run's state in memory and lets :mod:`fuseline.workflow.rules`
decide what happens after each step, exactly as a broker would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fuseline.messages import RunDetails, StepError, StepRecord
from fuseline.status import Status
from fuseline.workflow._execution import StepOutcome, execute_step, execute_step_async
from fuseline.workflow.rules import (
    ReadyStep,
    Settlement,
    StepFacts,
    choose_branch,
    run_status,
    settle,
    start,
)

if TYPE_CHECKING:
    from fuseline.workflow._workflow import Workflow

__all__ = ["LocalRun", "run_local", "run_local_async"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Record:
    """A step's record while the run is going; a ``StepRecord`` once reported."""

    status: Status = Status.PENDING
    result: Any = None
    error: StepError | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None


class LocalRun:
    """One run's state, held in memory."""

    def __init__(self, workflow: Workflow, inputs: dict[str, Any]) -> None:
        self.graph = workflow._schema_and_graph()[1]
        self.workflow = workflow
        self.inputs = inputs
        self.run_id = uuid.uuid4().hex
        self.created_at = _now()
        self.facts: dict[str, StepFacts] = {}
        self.records = {name: _Record() for name in self.graph.step_names}
        self.results: dict[str, Any] = {}
        self.queue: deque[ReadyStep] = deque()
        self._finished = 0
        self._apply(start(self.graph))

    def _apply(self, settlement: Settlement) -> None:
        for ready in settlement.ready:
            self.facts[ready.name] = StepFacts(Status.PENDING, queued=True)
            self.queue.append(ready)
        for names, status in (
            (settlement.skipped, Status.SKIPPED),
            (settlement.cancelled, Status.CANCELLED),
        ):
            for name in names:
                self.facts[name] = StepFacts(status)
                self.records[name].status = status
                self.records[name].finished_at = _now()

    def take(self) -> tuple[str, dict[str, Any]]:
        """Mark the next ready step RUNNING; return its name and its inputs' results."""
        ready = self.queue.popleft()
        record = self.records[ready.name]
        record.status = Status.RUNNING
        record.attempts += 1
        record.started_at = _now()
        self.facts[ready.name] = StepFacts(Status.RUNNING)
        sources = self.graph.result_sources(ready.name, ready.or_winners)
        return ready.name, {s: self.results[s] for s in sources if s in self.results}

    def finish(self, name: str, outcome: StepOutcome) -> None:
        """Record how a step ended and settle what follows from it."""
        self._finished += 1
        branch = None
        if outcome.status is Status.SUCCEEDED:
            self.results[name] = outcome.result
            branch = choose_branch(self.graph, name, outcome.result)
        self.facts[name] = StepFacts(outcome.status, branch, order=self._finished)
        record = self.records[name]
        record.status, record.result, record.error = outcome.status, outcome.result, outcome.error
        record.finished_at = _now()
        self.workflow.step(name).state = outcome.status
        self._apply(settle(self.graph, self.facts, [name]))

    def details(self) -> RunDetails:
        """The run as a ``RunDetails``, the same model brokers return."""
        status = run_status(self.graph, self.facts)
        finished = status.is_terminal
        return RunDetails(
            run_id=self.run_id,
            workflow_id=self.graph.schema.workflow_id,
            workflow_version=self.graph.schema.version,
            status=status,
            created_at=self.created_at,
            finished_at=_now() if finished else None,
            inputs=self.inputs,
            steps={
                name: StepRecord(name=name, **vars(record)) for name, record in self.records.items()
            },
            result={o: self.results.get(o) for o in self.graph.outputs} if finished else None,
        )

    def step_args(self, name: str) -> list[str]:
        """Names of the step's direct predecessors, for argument binding."""
        return list(self.graph.predecessors[name])


def run_local(workflow: Workflow, inputs: dict[str, Any], *, parallel: int = 1) -> RunDetails:
    """Run ``workflow`` to the end; up to ``parallel`` steps at once in threads."""
    run = LocalRun(workflow, inputs)
    for policy in workflow.policies:
        policy.on_workflow_start(inputs)

    def execute(name: str, results: dict[str, Any]) -> StepOutcome:
        step = workflow.step(name)
        return execute_step(workflow, step, results, inputs, run.step_args(name))

    if parallel <= 1:
        while run.queue:
            name, results = run.take()
            run.finish(name, execute(name, results))
    else:
        with ThreadPoolExecutor(parallel, thread_name_prefix="fuseline-pool") as pool:
            running: dict[Future[StepOutcome], str] = {}
            while run.queue or running:
                while run.queue and len(running) < parallel:
                    name, results = run.take()
                    running[pool.submit(execute, name, results)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    run.finish(running.pop(future), future.result())
    details = run.details()
    for policy in workflow.policies:
        policy.on_workflow_finished(details)
    return details


async def run_local_async(workflow: Workflow, inputs: dict[str, Any]) -> RunDetails:
    """Run ``workflow`` to the end on the running loop, ready steps concurrently."""
    run = LocalRun(workflow, inputs)
    for policy in workflow.policies:
        policy.on_workflow_start(inputs)
    running: dict[asyncio.Task[StepOutcome], str] = {}
    try:
        while run.queue or running:
            while run.queue:
                name, results = run.take()
                step = workflow.step(name)
                coro = execute_step_async(workflow, step, results, inputs, run.step_args(name))
                running[asyncio.ensure_future(coro)] = name
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                run.finish(running.pop(task), task.result())
    finally:
        for task in running:
            task.cancel()
    details = run.details()
    for policy in workflow.policies:
        policy.on_workflow_finished(details)
    return details
