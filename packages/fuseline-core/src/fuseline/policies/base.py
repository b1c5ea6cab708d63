"""The two kinds of policy and how a step's policies wrap its work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fuseline.messages import RunDetails
    from fuseline.step import Step
    from fuseline.workflow import Workflow

__all__ = ["StepPolicy", "WorkflowPolicy", "call_with_policies", "call_with_policies_async"]


class StepPolicy:
    """Changes how one step executes. Subclass and override what you need.

    ``execute`` wraps the synchronous call of ``run_step`` and
    ``execute_async`` the asynchronous one; both receive a ``call`` that runs
    the rest of the chain and must return (or re-raise) what it gives.
    Policies wrap in the order they were added, the first outermost, except
    those with ``outermost = True`` (``RetryPolicy``), which wrap all others so
    that each attempt runs the whole chain, timeouts included.

    Policies run where the step runs, in-process or on a worker. What the
    broker must know about them (timeouts, attempt limits) comes from
    :meth:`schema_fields`.
    """

    outermost: ClassVar[bool] = False

    def __init__(self) -> None:
        self.step: Step | None = None

    def attach_to_step(self, step: Step) -> None:
        """Called once when the policy is added to ``step``."""
        self.step = step

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        """Run ``call`` (the rest of the chain) for a synchronous step."""
        return call()

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call`` (the rest of the chain) for an asynchronous step."""
        return await call()

    def schema_fields(self) -> dict[str, Any]:
        """Settings to publish in the step's schema (``StepSchema`` field names)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WorkflowPolicy:
    """Observes a workflow's life. Override the hooks you need; all do nothing.

    Step hooks run wherever a step runs (in-process or on a worker). The
    workflow start and finish hooks run for in-process runs
    (``Workflow.run``/``run_async``); a distributed run has no single process
    that sees it start and finish.
    """

    def __init__(self) -> None:
        self.workflow: Workflow | None = None

    def attach_to_workflow(self, workflow: Workflow) -> None:
        """Called once when the policy is added to ``workflow``."""
        self.workflow = workflow

    def on_workflow_start(self, inputs: dict[str, Any]) -> None:
        """An in-process run is about to start with ``inputs``."""

    def on_workflow_finished(self, run: RunDetails) -> None:
        """An in-process run has finished; ``run`` holds its states and result."""

    def on_step_start(self, step: Step) -> None:
        """``step`` is about to run (its conditions passed)."""

    def on_step_success(self, step: Step, result: Any) -> None:
        """``step`` succeeded with ``result``."""

    def on_step_failure(self, step: Step, error: BaseException) -> None:
        """``step`` failed with ``error`` (after its retries)."""

    def on_step_skipped(self, step: Step) -> None:
        """``step`` was skipped because a condition said no."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _ordered(step: Step) -> list[StepPolicy]:
    first = [p for p in step.policies if p.outermost]
    return first + [p for p in step.policies if not p.outermost]


def call_with_policies(step: Step, call: Callable[[], Any]) -> Any:
    """Run ``call`` wrapped by ``step``'s policies (synchronous steps)."""
    chain = call
    for policy in reversed(_ordered(step)):
        chain = _wrap(policy, step, chain)
    return chain()


def _wrap(policy: StepPolicy, step: Step, inner: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: policy.execute(step, inner)


async def call_with_policies_async(step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``call`` wrapped by ``step``'s policies (asynchronous steps)."""
    chain = call
    for policy in reversed(_ordered(step)):
        chain = _wrap_async(policy, step, chain)
    return await chain()


def _wrap_async(
    policy: StepPolicy, step: Step, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    return lambda: policy.execute_async(step, inner)
