"""How exceptions become HTTP error responses.

Every error body is ``{"error": {"code", "message", "details"}}``, where
``code`` is the stable code of a :mod:`fuseline.errors` class, so the HTTP
client raises the same exception the broker raised. The status follows the
error's family:

=====================================  ======
error                                  status
=====================================  ======
malformed request (not JSON, NaN, NUL)  400
``unauthorized``                        401
``forbidden``                           403
``*not_found``                          404
route exists, method does not           405
``wait_timeout``                        408
``conflict`` and its kinds              409
``payload_too_large``                   413
``invalid_input``, workflow definition  422
``unavailable``                         503
anything unexpected (a bug)             500
=====================================  ======
"""

from __future__ import annotations

import json
from typing import Any

from fuseline.clients.wire import ErrorBody, ErrorDetail
from fuseline.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    ConflictError,
    FuselineError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResultNotSerializableError,
    StepBindingError,
    WaitTimeoutError,
    WorkflowDefinitionError,
)

__all__ = ["ERROR_STATUSES", "HttpError", "error_body", "status_for"]

# Most specific first: PayloadTooLargeError is also an InvalidInputError.
ERROR_STATUSES: tuple[tuple[type[FuselineError], int], ...] = (
    (PayloadTooLargeError, 413),
    (InvalidInputError, 422),
    (WorkflowDefinitionError, 422),
    (StepBindingError, 422),
    (ResultNotSerializableError, 422),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (WaitTimeoutError, 408),
    (BrokerUnavailableError, 503),
)

_MAX_DETAILS_CHARS = 16 * 1024


class HttpError(Exception):
    """An error with a status chosen by the HTTP layer (e.g. 400 for bad JSON).

    Attributes:
        status: The HTTP status.
        error: The Fuseline error whose code and message go in the body.
        headers: Extra response headers.
    """

    def __init__(
        self, status: int, error: FuselineError, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers or {}


def status_for(error: FuselineError) -> int:
    """The HTTP status of ``error``."""
    for cls, status in ERROR_STATUSES:
        if isinstance(error, cls):
            return status
    return 400


def _plain_details(details: dict[str, Any]) -> dict[str, Any]:
    # Details come from broker code and may hold anything; the response must
    # stay valid (and small) JSON whatever they hold.
    try:
        text = json.dumps(details, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return {}
    if len(text) > _MAX_DETAILS_CHARS:
        return {"truncated": True}
    plain: dict[str, Any] = json.loads(text)
    return plain


def error_body(error: FuselineError) -> bytes:
    """The JSON error body of ``error``."""
    body = ErrorBody(
        error=ErrorDetail(
            code=error.code, message=error.message, details=_plain_details(error.details)
        )
    )
    return body.model_dump_json().encode()


def internal_error_body() -> bytes:
    """The body of a 500: says nothing about the server's internals."""
    body = ErrorBody(
        error=ErrorDetail(
            code="internal_error",
            message="The broker hit an unexpected error; it is logged on the server.",
        )
    )
    return body.model_dump_json().encode()
