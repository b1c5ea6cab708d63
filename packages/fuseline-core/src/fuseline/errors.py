"""Every exception Fuseline raises on purpose.

All of them derive from :class:`FuselineError`, and most also derive from the
builtin that describes the same kind of problem, so ``except ValueError`` keeps
working for code that does not know about Fuseline. Each class has a stable
``code``: the HTTP broker puts it in its JSON error bodies and the HTTP client
maps it back to the same class, so a caller sees the same exception whether it
talks to a broker in-process or over the network.

The tree::

    FuselineError                                 fuseline_error
    ├── WorkflowDefinitionError (ValueError)      invalid_workflow
    │   ├── CycleError                            workflow_cycle
    │   ├── UnknownStepError                      unknown_step
    │   ├── DuplicateStepNameError                duplicate_step_name
    │   └── AmbiguousEdgeError                    ambiguous_edge
    ├── StepBindingError (TypeError)              step_binding
    ├── ResultNotSerializableError (TypeError)    result_not_serializable
    ├── StepTimeoutError (TimeoutError)           step_timeout
    ├── MissingDependencyError (ImportError)      missing_dependency
    ├── InvalidInputError (ValueError)            invalid_input
    │   └── PayloadTooLargeError                  payload_too_large
    ├── NotFoundError (LookupError)               not_found
    │   ├── WorkflowNotFoundError                 workflow_not_found
    │   ├── RunNotFoundError                      run_not_found
    │   ├── WorkerNotFoundError                   worker_not_found
    │   └── StepNotFoundError                     step_not_found
    ├── ConflictError                             conflict
    │   ├── SchemaConflictError                   schema_conflict
    │   ├── LeaseConflictError                    lease_conflict
    │   ├── IdempotencyConflictError              idempotency_conflict
    │   └── RunFinishedError                      run_finished
    ├── AuthenticationError (PermissionError)     unauthorized
    ├── PermissionDeniedError (PermissionError)   forbidden
    ├── WaitTimeoutError (TimeoutError)           wait_timeout
    └── BrokerUnavailableError (ConnectionError)  unavailable
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AmbiguousEdgeError",
    "AuthenticationError",
    "BrokerUnavailableError",
    "ConflictError",
    "CycleError",
    "DuplicateStepNameError",
    "FuselineError",
    "IdempotencyConflictError",
    "InvalidInputError",
    "LeaseConflictError",
    "MissingDependencyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ResultNotSerializableError",
    "RunFinishedError",
    "RunNotFoundError",
    "SchemaConflictError",
    "StepBindingError",
    "StepNotFoundError",
    "StepTimeoutError",
    "UnknownStepError",
    "WaitTimeoutError",
    "WorkerNotFoundError",
    "WorkflowDefinitionError",
    "WorkflowNotFoundError",
    "error_class_for_code",
]


class FuselineError(Exception):
    """Base class of every error Fuseline raises on purpose.

    Attributes:
        code: Stable machine-readable identifier, used on the wire.
        details: Optional JSON-compatible context (ids, field names).
    """

    code: ClassVar[str] = "fuseline_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class WorkflowDefinitionError(FuselineError, ValueError):
    """A workflow or step definition cannot be run as written."""

    code = "invalid_workflow"


class CycleError(WorkflowDefinitionError):
    """The steps' edges form a cycle; workflows must be acyclic."""

    code = "workflow_cycle"


class UnknownStepError(WorkflowDefinitionError):
    """Something refers to a step that is not part of the workflow."""

    code = "unknown_step"


class DuplicateStepNameError(WorkflowDefinitionError):
    """Two different steps of one workflow carry the same name."""

    code = "duplicate_step_name"


class AmbiguousEdgeError(WorkflowDefinitionError):
    """The same edge was declared twice with conflicting meaning."""

    code = "ambiguous_edge"


class StepBindingError(FuselineError, TypeError):
    """A step parameter could not be given a value."""

    code = "step_binding"


class ResultNotSerializableError(FuselineError, TypeError):
    """A step result (or workflow input) cannot be represented as JSON."""

    code = "result_not_serializable"


class StepTimeoutError(FuselineError, TimeoutError):
    """A step ran longer than its ``StepTimeoutPolicy`` allows."""

    code = "step_timeout"


class MissingDependencyError(FuselineError, ImportError):
    """An optional distribution is needed; the message names the pip command."""

    code = "missing_dependency"


class InvalidInputError(FuselineError, ValueError):
    """A request or argument is malformed; nothing was changed."""

    code = "invalid_input"


class PayloadTooLargeError(InvalidInputError):
    """A body, result or schema is over the configured size limit."""

    code = "payload_too_large"


class NotFoundError(FuselineError, LookupError):
    """The thing asked for does not exist."""

    code = "not_found"


class WorkflowNotFoundError(NotFoundError):
    """No workflow schema is registered under that id and version."""

    code = "workflow_not_found"


class RunNotFoundError(NotFoundError):
    """No run has that id."""

    code = "run_not_found"


class WorkerNotFoundError(NotFoundError):
    """No registered worker has that id."""

    code = "worker_not_found"


class StepNotFoundError(NotFoundError):
    """The run's workflow has no step with that name."""

    code = "step_not_found"


class ConflictError(FuselineError):
    """The request contradicts the current state; nothing was changed."""

    code = "conflict"


class SchemaConflictError(ConflictError):
    """The same workflow id and version was registered with another graph."""

    code = "schema_conflict"


class LeaseConflictError(ConflictError):
    """A report or heartbeat does not hold the step's current lease."""

    code = "lease_conflict"


class IdempotencyConflictError(ConflictError):
    """An idempotency key was reused with a different request."""

    code = "idempotency_conflict"


class RunFinishedError(ConflictError):
    """The run has already reached a terminal state."""

    code = "run_finished"


class AuthenticationError(FuselineError, PermissionError):
    """No valid bearer token was presented."""

    code = "unauthorized"


class PermissionDeniedError(FuselineError, PermissionError):
    """The token is valid but its role may not do this."""

    code = "forbidden"


class WaitTimeoutError(FuselineError, TimeoutError):
    """Waiting for a run to finish took longer than allowed."""

    code = "wait_timeout"


class BrokerUnavailableError(FuselineError, ConnectionError):
    """The broker (or its database) cannot be reached right now; try again."""

    code = "unavailable"


def _all_error_classes() -> list[type[FuselineError]]:
    found: list[type[FuselineError]] = []
    pending: list[type[FuselineError]] = [FuselineError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def error_class_for_code(code: str) -> type[FuselineError]:
    """Return the error class whose stable ``code`` is ``code``.

    Unknown codes map to :class:`FuselineError`, so a newer broker never makes
    an older client crash while decoding an error.
    """
    for cls in _all_error_classes():
        if cls.code == code:
            return cls
    return FuselineError
