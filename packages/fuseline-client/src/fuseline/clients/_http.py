"""``HttpBrokerClient``: the client API over the broker's HTTP API."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx

from fuseline.clients import _http_calls as calls
from fuseline.clients._base import BrokerClient, WorkflowRef, find_workflow, schema_of
from fuseline.clients._http_calls import RETRYABLE_STATUSES, Call, error_from_response
from fuseline.clients._http_common import (
    DEFAULT_MAX_WAIT_PER_REQUEST,
    DEFAULT_TIMEOUT,
    MIN_POLL_SPACING,
    Deadline,
    HttpSettings,
    build_request,
    check_wait,
    claim_size,
    dispatch_body,
    dispatch_call,
    make_backoff,
)
from fuseline.clients._plain_http import PlainHttp, Reply, plain_http_usable, reply_of
from fuseline.clients._retry import Backoff, reached_server, retry_after_seconds
from fuseline.clients.wire import DispatchRequest, Health
from fuseline.messages import (
    KeepAliveReply,
    ReportBatchReply,
    RunDetails,
    RunPage,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from fuseline.status import Status
from fuseline.workflow import WorkflowSchema

__all__ = ["HttpBrokerClient"]

T = TypeVar("T")


class HttpBrokerClient(BrokerClient):
    """Talks to a broker server (``python -m fuseline.broker.http``) over HTTP.

    One client keeps a pool of connections and is safe to share between
    threads; close it (or use it as a context manager) when done.

    Failures to connect are retried for every call. Failures after the request
    may have reached the broker, and 502/503/504 answers, are retried only for
    calls that are safe to repeat: reads, heartbeats, reports that carry a
    lease token, and dispatches (each dispatch carries an idempotency key,
    generated when you give none). Errors come back as the exceptions of
    :mod:`fuseline.errors`; a broker that cannot be reached raises
    :class:`~fuseline.errors.BrokerUnavailableError`.

    Args:
        base_url: The broker's address, e.g. ``http://localhost:8000``.
        token: Bearer token: a worker token for workers, a client token for
            applications.
        timeout: Seconds allowed to connect, send and read one response; long
            polls get their wait on top.
        retries: How many times a failed call is tried again.
        backoff: Pauses between retries (default: from 0.2 s doubling to 5 s,
            jittered).
        headers: Extra headers sent with every request.
        max_wait_per_request: Longest server-side wait asked for in one
            request; longer waits are split into several requests.
        transport: An httpx transport to use instead of the network (tests).
        verify: TLS verification, as for httpx (True, False, or an
            ``ssl.SSLContext``).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: Backoff | None = None,
        headers: Mapping[str, str] | None = None,
        max_wait_per_request: float = DEFAULT_MAX_WAIT_PER_REQUEST,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        self._settings = HttpSettings(base_url, token, timeout, max_wait_per_request, headers)
        self._backoff = backoff or make_backoff(retries)
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            transport=transport,
            verify=verify,
            follow_redirects=False,
        )
        # Plain http:// without a proxy skips httpx (see _plain_http).
        self._plain: PlainHttp | None = None
        if transport is None and plain_http_usable(self._settings.base_url):
            self._plain = PlainHttp(
                self._settings.base_url, self._settings.headers, self._settings.timeout
            )

    @property
    def base_url(self) -> str:
        """The broker's address."""
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"HttpBrokerClient({self.base_url!r})"

    def __enter__(self) -> HttpBrokerClient:
        return self

    def close(self) -> None:
        """Close the pooled connections."""
        if self._plain is not None:
            self._plain.close()
        self._http.close()

    def _send(self, call: Call[Any]) -> Reply:
        if self._plain is not None:
            return self._plain.send(call)
        response = self._http.send(build_request(self._http, self._settings, call))
        return reply_of(response)

    # -- sending ----------------------------------------------------------------------
    def _execute(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                reply = self._send(call)
            except httpx.TransportError as exc:
                if attempt < self._backoff.retries and (call.retry_safe or not reached_server(exc)):
                    time.sleep(self._backoff.delay(attempt))
                    attempt += 1
                    continue
                raise self._settings.unavailable(exc) from exc
            if (
                reply.status in RETRYABLE_STATUSES
                and call.retry_safe
                and attempt < self._backoff.retries
            ):
                retry_after = retry_after_seconds(reply.retry_after)
                time.sleep(self._backoff.delay(attempt, retry_after))
                attempt += 1
                continue
            if 200 <= reply.status < 300:
                return call.parse(reply.content)
            raise error_from_response(reply.status, reply.content, self.base_url)

    # -- workers ----------------------------------------------------------------------
    def register_worker(self, workflows: list[WorkflowSchema], *, name: str | None = None) -> str:
        """Register the workflow versions this worker runs; return its new worker id."""
        return self._execute(calls.register_worker(workflows, name))

    def get_step(self, worker_id: str, *, wait: float = 0.0) -> StepAssignment | None:
        """Claim one ready step, waiting up to ``wait`` seconds for one to appear."""
        found = self.get_steps(worker_id, max_steps=1, wait=wait)
        return found[0] if found else None

    def get_steps(
        self, worker_id: str, *, max_steps: int = 1, wait: float = 0.0
    ) -> list[StepAssignment]:
        """Claim up to ``max_steps`` ready steps, waiting up to ``wait`` seconds for the first."""
        size = claim_size(max_steps)
        deadline = Deadline(check_wait(wait))
        while True:
            asked = deadline.remaining(self._settings.max_wait)
            started = time.monotonic()
            found = self._execute(calls.claim(worker_id, size, asked))
            if found or deadline.passed or asked == 0:
                return found
            self._space_out(started, asked)

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        """Report a step's outcome; with ``claim_next`` also claim the next ready step."""
        return self._execute(calls.report(worker_id, report, claim_next))

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        """Report several outcomes in one request (one transaction at the broker)."""
        return self._execute(calls.report_batch(worker_id, reports, claim))

    def keep_alive(self, worker_id: str, lease_tokens: list[str] | None = None) -> KeepAliveReply:
        """Heartbeat: extend the named leases (default: all the worker holds)."""
        return self._execute(calls.heartbeat(worker_id, lease_tokens))

    # -- applications -----------------------------------------------------------------
    def dispatch_workflow(
        self,
        workflow: WorkflowSchema,
        inputs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run and return its id (the same id again for a repeated key)."""
        return self._dispatch(dispatch_body(workflow, inputs, None), idempotency_key)

    def dispatch(
        self,
        workflow: WorkflowRef,
        inputs: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run of a schema, a ``Workflow`` or a stored workflow id; return its id.

        With a workflow id the broker picks the stored schema (the latest
        version unless ``version`` is given), in the same request.
        """
        if isinstance(workflow, str):
            return self._dispatch(dispatch_body(workflow, inputs, version), idempotency_key)
        return self.dispatch_workflow(
            schema_of(workflow, version), inputs, idempotency_key=idempotency_key
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

        The dispatch itself waits at the broker, so a run that finishes within
        one long poll costs a single request.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed before the run finished.
        """
        deadline = Deadline(timeout)
        request = dispatch_body(workflow, inputs, version)
        asked = deadline.remaining(self._settings.max_wait)
        created = self._execute(dispatch_call(request, idempotency_key, asked))
        run = created.run
        if run is not None and run.status.is_terminal:
            return run
        if deadline.passed:
            raise deadline.timed_out(run or self.get_run(created.run_id))
        return self._wait(created.run_id, deadline)

    def _dispatch(self, request: DispatchRequest, idempotency_key: str | None) -> str:
        return self._execute(dispatch_call(request, idempotency_key)).run_id

    def get_run(self, run_id: str) -> RunDetails:
        """Return a run with its step states and result."""
        return self._execute(calls.get_run(run_id))

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunDetails:
        """Wait until the run is finished and return it (long polls the broker).

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        return self._wait(run_id, Deadline(timeout))

    def _wait(self, run_id: str, deadline: Deadline) -> RunDetails:
        while True:
            asked = deadline.remaining(self._settings.max_wait)
            started = time.monotonic()
            run = self._execute(calls.wait_run(run_id, asked))
            if run.status.is_terminal:
                return run
            if deadline.passed:
                raise deadline.timed_out(run)
            self._space_out(started, asked)

    @staticmethod
    def _space_out(started: float, asked: float) -> None:
        # A server that answers long before the wait asked for (it caps waits
        # lower) must not turn the loop into a busy poll.
        elapsed = time.monotonic() - started
        if elapsed < min(asked, MIN_POLL_SPACING):
            time.sleep(min(asked, MIN_POLL_SPACING) - elapsed)

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Return a page of runs, newest first."""
        return self._execute(calls.list_runs(workflow_id, status, limit, cursor))

    def cancel_run(self, run_id: str) -> RunDetails:
        """Cancel a run and return its state."""
        return self._execute(calls.cancel_run(run_id))

    def list_workflows(self) -> list[WorkflowSchema]:
        """Return the stored workflow schemas."""
        return self._execute(calls.list_workflows())

    def get_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowSchema:
        """Return the stored schema of ``workflow_id`` (its latest version unless ``version``).

        Raises:
            WorkflowNotFoundError: The broker stores no such schema.
        """
        if version is not None:
            return self._execute(calls.get_workflow(workflow_id, version))
        return find_workflow(self._execute(calls.list_workflows(workflow_id)), workflow_id, None)

    def list_workers(self) -> list[WorkerInfo]:
        """Return the registered workers."""
        return self._execute(calls.list_workers())

    def health(self) -> Health:
        """Ask the broker whether it is up (needs no token)."""
        return self._execute(calls.health())
