"""``BrokerClient``: how workers and applications talk to a broker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from fuseline.errors import (
    ConflictError,
    InvalidInputError,
    ResultNotSerializableError,
    RunNotFoundError,
    StepNotFoundError,
)
from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    ReportOutcome,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.workflow import WorkflowSchema
from fuseline.workflow.versions import find_workflow

__all__ = ["BrokerClient", "SupportsSchema", "WorkflowRef", "find_workflow", "schema_of"]


# What refuses one report of a batch without concerning the others.
_ONE_REPORT_REFUSED = (
    ConflictError,
    InvalidInputError,
    ResultNotSerializableError,
    RunNotFoundError,
    StepNotFoundError,
)


class SupportsSchema(Protocol):
    """Anything that describes itself as a schema, such as a ``Workflow``."""

    def to_schema(self) -> WorkflowSchema:
        """Return the schema of this workflow."""
        ...


WorkflowRef = WorkflowSchema | SupportsSchema | str
"""What the dispatch helpers accept: a schema, a ``Workflow``, or a stored workflow id."""


def schema_of(
    workflow: WorkflowSchema | SupportsSchema, version: str | None = None
) -> WorkflowSchema:
    """The schema of ``workflow``; ``version``, when given, must be the schema's own.

    Raises:
        InvalidInputError: ``version`` differs from the schema's version.
    """
    schema = workflow if isinstance(workflow, WorkflowSchema) else workflow.to_schema()
    if version is not None and version != schema.version:
        raise InvalidInputError(
            f"version={version!r} differs from the schema's own version {schema.version!r}; "
            "pass a version only together with a workflow id."
        )
    return schema


class BrokerClient(ABC):
    """The broker's API as seen from a worker or an application.

    ``LocalBrokerClient`` calls a broker object in this process;
    ``HttpBrokerClient`` calls a broker server over HTTP. Both raise the
    exceptions of :mod:`fuseline.errors`.
    """

    # -- workers ----------------------------------------------------------------
    @abstractmethod
    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        """Register the workflow versions this worker runs; return its new worker id."""

    @abstractmethod
    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        """Claim one ready step, waiting up to ``wait`` seconds for one to appear."""

    @abstractmethod
    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        """Claim up to ``max_steps`` ready steps, waiting up to ``wait`` seconds for the first."""

    @abstractmethod
    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        """Report a step's outcome; with ``claim_next`` also claim the next ready step."""

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        """Report several outcomes at once, claiming up to ``claim`` next steps with them.

        Each report is accepted or refused on its own; a refused one has the
        error's code in its outcome (``outcome.error()`` gives the exception)
        and changes nothing. Errors about the whole call (an unknown worker, an
        unreachable broker) are raised. Clients that can send the reports
        together do so; this default sends them one at a time.
        """
        outcomes: list[ReportOutcome] = []
        claimed: list[StepAssignment] = []
        for report in reports:
            try:
                following = self.report_step(worker_id, report, claim_next=len(claimed) < claim)
            except _ONE_REPORT_REFUSED as exc:
                outcomes.append(ReportOutcome.refused(report, exc))
                continue
            outcomes.append(ReportOutcome.accepted_for(report))
            if following is not None:
                claimed.append(following)
        return ReportBatchReply(outcomes=outcomes, assignments=claimed)

    @abstractmethod
    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        """Heartbeat: extend the named leases (default: all the worker holds)."""

    # -- applications -----------------------------------------------------------
    @abstractmethod
    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run and return its id (the same id again for a repeated key)."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunDetails:
        """Return a run with its step states and result."""

    @abstractmethod
    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Wait until the run is finished and return it.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """

    @abstractmethod
    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Return a page of runs, newest first."""

    @abstractmethod
    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel a run and return its state."""

    @abstractmethod
    def list_workflows(self) -> list[WorkflowSchema]:
        """Return the stored workflow schemas."""

    @abstractmethod
    def list_workers(self) -> list[WorkerInfo]:
        """Return the registered workers."""

    # -- application helpers ------------------------------------------------------
    def get_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowSchema:
        """Return the stored schema of ``workflow_id`` (its latest version unless ``version``).

        Raises:
            WorkflowNotFoundError: The broker stores no such schema.
        """
        return find_workflow(self.list_workflows(), workflow_id, version)

    def dispatch(
        self,
        workflow: WorkflowRef,
        inputs: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run of a workflow given as a schema, a ``Workflow`` or a stored id.

        Args:
            workflow: A ``WorkflowSchema``, anything with ``to_schema()`` (a
                ``Workflow``), or the id of a workflow the broker stores.
            inputs: The run's inputs.
            version: With a workflow id, the stored version to run (default: latest).
            idempotency_key: Repeating a dispatch with the same key returns the same run.

        Returns:
            The new run's id.
        """
        return self.dispatch_workflow(
            self._resolve_schema(workflow, version), inputs, idempotency_key=idempotency_key
        )

    def run_workflow(
        self,
        workflow: WorkflowRef,
        inputs: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> RunDetails:
        """Dispatch a run and wait for it to finish; see :meth:`dispatch`.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed before the run finished.
        """
        run_id = self.dispatch(workflow, inputs, version=version, idempotency_key=idempotency_key)
        return self.wait_for_run(run_id, timeout=timeout)

    def _resolve_schema(self, workflow: WorkflowRef, version: str | None) -> WorkflowSchema:
        if isinstance(workflow, str):
            return self.get_workflow(workflow, version)
        return schema_of(workflow, version)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
