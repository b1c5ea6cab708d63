"""Settings and request pieces shared by the sync and the async HTTP client."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import pydantic

from fuseline.clients import _http_calls as calls
from fuseline.clients._base import WorkflowRef, schema_of
from fuseline.clients._http_calls import Call
from fuseline.clients._retry import Backoff
from fuseline.clients.wire import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_CLAIM_STEPS,
    DispatchRequest,
    DispatchSchema,
    DispatchStored,
    RunCreated,
)
from fuseline.errors import BrokerUnavailableError, InvalidInputError, WaitTimeoutError
from fuseline.messages import RunDetails

__all__ = [
    "DEFAULT_MAX_WAIT_PER_REQUEST",
    "DEFAULT_TIMEOUT",
    "MIN_POLL_SPACING",
    "Deadline",
    "HttpSettings",
    "build_request",
    "check_wait",
    "claim_size",
    "dispatch_body",
    "dispatch_call",
    "dispatch_request",
    "make_backoff",
    "new_idempotency_key",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
# The longest wait one request asks the server for. Long polls are split into
# requests of at most this long, well below the usual 60 s proxy timeouts.
DEFAULT_MAX_WAIT_PER_REQUEST = 25.0
# After a long poll that the server answered early (a server configured with a
# short maximum wait), pause at least this long before the next one.
MIN_POLL_SPACING = 0.2


def _version() -> str:
    from fuseline import __version__

    return __version__


class HttpSettings:
    """Validated constructor arguments of an HTTP client.

    Args:
        base_url: The broker's address, e.g. ``http://localhost:8000`` (a path
            prefix such as ``https://example.com/fuseline`` is kept).
        token: Bearer token sent with every request.
        timeout: Seconds allowed to connect, send and read (a long poll gets
            its server-side wait on top).
        max_wait_per_request: Longest server-side wait asked for in one request.
        headers: Extra headers for every request.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        max_wait_per_request: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidInputError(
                f"The broker URL must look like http://host:port, got {base_url!r}."
            )
        if token is not None and (not token or any(c.isspace() or ord(c) < 32 for c in token)):
            raise InvalidInputError("The token must be non-empty and hold no spaces or controls.")
        if timeout <= 0 or max_wait_per_request <= 0:
            raise InvalidInputError("timeout and max_wait_per_request must be positive.")
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        self.max_wait = max_wait_per_request
        self.headers = {"User-Agent": f"fuseline-client/{_version()}", "Accept": "application/json"}
        self.headers.update(headers or {})
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def timeout_for(self, call: Call[Any]) -> httpx.Timeout:
        """The timeouts of one call: the server-side wait extends the read timeout."""
        return httpx.Timeout(self.timeout, read=self.timeout + call.wait)

    def unavailable(self, exc: Exception) -> BrokerUnavailableError:
        """The error for a broker that could not be reached (never shows the token)."""
        return BrokerUnavailableError(
            f"Cannot reach the broker at {self.base_url}: {type(exc).__name__}: {exc}",
            details={"base_url": self.base_url},
        )


def build_request(
    http: httpx.Client | httpx.AsyncClient, settings: HttpSettings, call: Call[Any]
) -> httpx.Request:
    """The ``httpx.Request`` for ``call``."""
    headers = dict(call.headers)
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return http.build_request(
        call.method,
        call.path,
        content=call.body,
        params=call.params or None,
        headers=headers,
        timeout=settings.timeout_for(call),
    )


def make_backoff(retries: int) -> Backoff:
    """The default backoff with ``retries`` retries."""
    if retries < 0:
        raise InvalidInputError(f"retries must be zero or more, got {retries}.")
    return Backoff(retries=retries)


_KEY_PATTERN = re.compile(IDEMPOTENCY_KEY_PATTERN)


def new_idempotency_key() -> str:
    """A fresh key, so that every dispatch can be retried safely."""
    return f"auto-{uuid.uuid4().hex}"


def claim_size(max_steps: int) -> int:
    """Check ``max_steps`` and cap it at what one request may ask for."""
    if max_steps < 1:
        raise InvalidInputError(f"max_steps must be at least 1, got {max_steps}.")
    return min(max_steps, MAX_CLAIM_STEPS)


def check_wait(wait: float) -> float:
    """Check a wait in seconds."""
    if not wait >= 0:  # also refuses NaN
        raise InvalidInputError(f"wait must be zero or more seconds, got {wait}.")
    return wait


def dispatch_request(build: Callable[[], DispatchRequest]) -> DispatchRequest:
    """Build a dispatch body, reporting bad arguments as ``InvalidInputError``."""
    try:
        return build()
    except pydantic.ValidationError as exc:
        raise InvalidInputError(f"Invalid dispatch request: {exc}") from None


def dispatch_body(
    workflow: WorkflowRef, inputs: dict[str, Any] | None, version: str | None
) -> DispatchRequest:
    """The body that starts a run of a schema, a ``Workflow`` or a stored workflow id."""
    if isinstance(workflow, str):
        workflow_id = workflow
        return dispatch_request(
            lambda: DispatchRequest(
                DispatchStored(workflow_id=workflow_id, version=version, inputs=inputs or {})
            )
        )
    schema = schema_of(workflow, version)
    return dispatch_request(
        lambda: DispatchRequest(DispatchSchema(workflow=schema, inputs=inputs or {}))
    )


def dispatch_call(
    request: DispatchRequest, idempotency_key: str | None, wait: float = 0.0
) -> Call[RunCreated]:
    """The dispatch of ``request``, under a fresh idempotency key unless one is given.

    Raises:
        InvalidInputError: The key is not what the broker accepts (checked
            here, since a key that cannot go in a header would fail to send).
    """
    if idempotency_key is not None and not _KEY_PATTERN.fullmatch(idempotency_key):
        raise InvalidInputError(
            f"idempotency_key must be 1 to 200 visible ASCII characters (no spaces), "
            f"not {idempotency_key[:40]!r}."
        )
    return calls.dispatch(request, idempotency_key or new_idempotency_key(), wait)


class Deadline:
    """A point in time a wait must end by (or never, for ``None``)."""

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and not seconds >= 0:
            raise InvalidInputError(f"timeout must be zero or more seconds, got {seconds}.")
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self, cap: float) -> float:
        """Seconds left, at most ``cap`` (``cap`` itself when there is no deadline)."""
        if self._end is None:
            return cap
        return max(0.0, min(cap, self._end - time.monotonic()))

    @property
    def passed(self) -> bool:
        """Whether the deadline is over."""
        return self._end is not None and time.monotonic() >= self._end

    def timed_out(self, run: RunDetails) -> WaitTimeoutError:
        """The error for a run that is still going when the deadline passed."""
        return WaitTimeoutError(
            f"Run {run.run_id!r} is still {run.status} after {self.seconds} seconds.",
            details={"run_id": run.run_id, "status": str(run.status)},
        )
