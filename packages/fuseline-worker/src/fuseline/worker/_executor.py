"""From assignment to report: find the step, run it on the right runner, queue its report."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from fuseline.errors import FuselineError, WorkflowNotFoundError
from fuseline.messages import StepReport
from fuseline.status import Status
from fuseline.worker._child import ChildProcessRunner
from fuseline.worker._held import HeldStep, HeldSteps, Phase
from fuseline.worker._runners import AsyncRunner, StepJob, StepRunner, ThreadRunner, failed
from fuseline.workflow._execution import StepOutcome

if TYPE_CHECKING:
    from fuseline.step import Step
    from fuseline.worker._outbox import Outbox
    from fuseline.workflow import Workflow

__all__ = ["StepExecutor", "SyncSteps"]

log = logging.getLogger("fuseline.worker")

SyncSteps = Literal["thread", "process"]
WorkflowKey = tuple[str, str]


class StepExecutor:
    """Starts held steps on their runners and queues a report for each one that ends.

    Args:
        workflows: The worker's workflows by (workflow id, version).
        held: The held steps.
        outbox: Where reports go.
        sync_steps: Run sync steps in threads or in killable child processes.
    """

    def __init__(
        self,
        workflows: Mapping[WorkflowKey, Workflow],
        held: HeldSteps,
        outbox: Outbox,
        *,
        sync_steps: SyncSteps = "thread",
    ) -> None:
        self._workflows = workflows
        self._held = held
        self._outbox = outbox
        self._async = AsyncRunner()
        self._sync: StepRunner = ChildProcessRunner() if sync_steps == "process" else ThreadRunner()
        self.finished = 0

    def start(self, held: HeldStep) -> None:
        """Run ``held``'s step; its report is queued when it ends."""
        log.info("%s: started", held.label)
        try:
            job = self._job(held)
        except FuselineError as exc:
            self._done(held, failed(exc))
            return
        runner = self._async if job.step.is_async else self._sync
        cancel = runner.start(job, lambda outcome: self._done(held, outcome))
        if cancel is not None:
            self._attach(held, cancel)

    def close(self) -> None:
        """Stop the event loop of async steps (cancelling what still runs there)."""
        self._async.close()
        self._sync.close()

    def _attach(self, held: HeldStep, cancel: Callable[[], None]) -> None:
        held.cancel = cancel
        if held.abandoned is not None:
            cancel()  # abandoned while it was being started

    def _job(self, held: HeldStep) -> StepJob:
        a = held.assignment
        workflow = self._workflows.get((a.workflow_id, a.workflow_version))
        if workflow is None:
            raise WorkflowNotFoundError(
                f"This worker has no workflow {a.workflow_id!r} version {a.workflow_version!r}; "
                f"it runs {sorted(self._workflows)}.",
                details={"workflow_id": a.workflow_id, "version": a.workflow_version},
            )
        step: Step = workflow.step(a.step_name)
        # Deep copies: a step that changes its arguments in place must not
        # change what another run, or the broker's memory, holds.
        inputs = {**copy.deepcopy(workflow.params), **copy.deepcopy(a.workflow_inputs)}
        return StepJob(workflow, step, copy.deepcopy(a.results), inputs, held.lost_hold)

    def _done(self, held: HeldStep, outcome: StepOutcome | None) -> None:
        seconds = time.monotonic() - held.started
        if outcome is None or not self._held.set_phase(held, Phase.REPORTING):
            why = held.abandoned or "cancelled"
            log.info("%s: dropped after %.2fs, %s", held.label, seconds, why)
            self._held.release(held)
            return
        self.finished += 1
        if outcome.error is not None:
            log.info(
                "%s: %s in %.2fs: %s: %s",
                held.label,
                outcome.status.value,
                seconds,
                outcome.error.type,
                outcome.error.message,
            )
        else:
            log.info("%s: %s in %.2fs", held.label, outcome.status.value, seconds)
        a = held.assignment
        report = StepReport(
            workflow_id=a.workflow_id,
            instance_id=a.instance_id,
            step_name=a.step_name,
            state=outcome.status,
            result=outcome.result if outcome.status is Status.SUCCEEDED else None,
            error=outcome.error,
            lease_token=a.lease_token,
        )
        self._outbox.put(held, report)
