"""Running one step: conditions, binding, hooks, policies, result to JSON.

Used by ``Workflow.run``, by ``Workflow._execute_step`` and by workers, so a
step behaves the same wherever it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fuseline._asyncio import run_coroutine_sync
from fuseline.jsonvalue import to_json_value
from fuseline.messages import StepError
from fuseline.policies.base import call_with_policies, call_with_policies_async
from fuseline.status import Status
from fuseline.workflow._binding import bind_arguments

if TYPE_CHECKING:
    from fuseline.step import Step
    from fuseline.workflow._workflow import Workflow

__all__ = ["StepOutcome", "execute_step", "execute_step_async"]


@dataclass
class StepOutcome:
    """How one execution of a step ended.

    Attributes:
        status: SUCCEEDED, FAILED or SKIPPED (a condition said no).
        result: The JSON form of the step's return value when SUCCEEDED.
        error: What went wrong when FAILED.
        exception: The exception itself, for in-process callers.
    """

    status: Status
    result: Any = None
    error: StepError | None = None
    exception: BaseException | None = None


def _fail(workflow: Workflow, step: Step, exc: BaseException) -> StepOutcome:
    for policy in workflow.policies:
        policy.on_step_failure(step, exc)
    return StepOutcome(Status.FAILED, error=StepError.from_exception(exc), exception=exc)


def _succeed(workflow: Workflow, step: Step, value: Any) -> StepOutcome:
    step.after_run(value)
    result = to_json_value(value, what=f"result of step {step.name!r}")
    for policy in workflow.policies:
        policy.on_step_success(step, result)
    return StepOutcome(Status.SUCCEEDED, result=result)


def _skip(workflow: Workflow, step: Step) -> StepOutcome:
    for policy in workflow.policies:
        policy.on_step_skipped(step)
    return StepOutcome(Status.SKIPPED)


def _prepare(
    workflow: Workflow,
    step: Step,
    results: Mapping[str, Any],
    inputs: Mapping[str, Any],
    predecessors: Sequence[str] | None,
) -> dict[str, Any] | None:
    """Bind arguments and run the start hooks; None means "skip the step"."""
    if predecessors is None:
        predecessors = [p.name for p in workflow.predecessors_of(step)]
    bound = bind_arguments(step, results, inputs, predecessors)
    if not bound.conditions_met:
        return None
    for policy in workflow.policies:
        policy.on_step_start(step)
    step.before_run()
    return bound.kwargs


def execute_step(
    workflow: Workflow,
    step: Step,
    results: Mapping[str, Any],
    inputs: Mapping[str, Any],
    predecessors: Sequence[str] | None = None,
) -> StepOutcome:
    """Run ``step`` once in this thread (an async step on a private event loop).

    Never raises for a failure of the step: the outcome says FAILED.
    """
    if step.is_async:
        return run_coroutine_sync(
            lambda: execute_step_async(workflow, step, results, inputs, predecessors)
        )
    try:
        kwargs = _prepare(workflow, step, results, inputs, predecessors)
        if kwargs is None:
            return _skip(workflow, step)
        value = call_with_policies(step, lambda: step.run_step(**kwargs))
        return _succeed(workflow, step, value)
    except Exception as exc:
        return _fail(workflow, step, exc)


async def execute_step_async(
    workflow: Workflow,
    step: Step,
    results: Mapping[str, Any],
    inputs: Mapping[str, Any],
    predecessors: Sequence[str] | None = None,
) -> StepOutcome:
    """Run ``step`` once on the running event loop (a sync step in a thread).

    Never raises for a failure of the step: the outcome says FAILED.
    """
    if not step.is_async:
        return await asyncio.to_thread(execute_step, workflow, step, results, inputs, predecessors)
    try:
        kwargs = _prepare(workflow, step, results, inputs, predecessors)
        if kwargs is None:
            return _skip(workflow, step)
        value = await call_with_policies_async(step, lambda: step.run_step(**kwargs))
        return _succeed(workflow, step, value)
    except Exception as exc:
        return _fail(workflow, step, exc)
