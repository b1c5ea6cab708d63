"""The ``Broker`` interface: what every broker, built in or custom, offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from fuseline.messages import (
    KeepAliveReply,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.workflow import WorkflowSchema

__all__ = ["Broker"]


class Broker(ABC):
    """Coordinates runs: stores schemas, hands steps to workers, accepts reports.

    A custom broker must implement the five worker-facing methods
    (``register_worker``, ``dispatch_workflow``, ``get_step``, ``report_step``
    and ``keep_alive``). The run API below them has default implementations
    that raise ``NotImplementedError``; the built-in brokers implement all of it.
    """

    # -- worker-facing ----------------------------------------------------------
    @abstractmethod
    def register_worker(self, workflows: list[WorkflowSchema]) -> str:
        """Store the schemas the worker can run and return a new worker id.

        Raises:
            SchemaConflictError: A schema's id and version is already stored
                with a different graph.
        """

    @abstractmethod
    def dispatch_workflow(
        self, workflow: WorkflowSchema, inputs: dict[str, Any] | None = None
    ) -> str:
        """Create a run of ``workflow`` with ``inputs``, enqueue its first steps, return its id."""

    @abstractmethod
    def get_step(self, worker_id: str) -> StepAssignment | None:
        """Hand the worker its next ready step, or None when there is none."""

    @abstractmethod
    def report_step(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        """Record a step's outcome and enqueue the successors it makes ready.

        Brokers that can hand the worker its next step in the same call (the
        built-in ones do, with ``claim_next=True``) return it; others return None.
        """

    @abstractmethod
    def keep_alive(self, worker_id: str) -> KeepAliveReply | None:
        """Note that the worker is alive and extend the leases it holds."""

    # -- run API ----------------------------------------------------------------
    def get_run(self, run_id: str) -> RunDetails:
        """Return the run with its step states and, once finished, its result."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_run")

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Block until the run is finished (or ``timeout`` seconds pass) and return it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement wait_for_run")

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Return runs, newest first, optionally filtered."""
        raise NotImplementedError(f"{type(self).__name__} does not implement list_runs")

    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel the run: pending steps at once, running ones at their next heartbeat."""
        raise NotImplementedError(f"{type(self).__name__} does not implement cancel_run")

    def list_workflows(self) -> list[WorkflowSchema]:
        """Return every stored schema."""
        raise NotImplementedError(f"{type(self).__name__} does not implement list_workflows")

    def list_workers(self) -> list[WorkerInfo]:
        """Return the registered workers."""
        raise NotImplementedError(f"{type(self).__name__} does not implement list_workers")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and threads. The broker is unusable afterwards."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
