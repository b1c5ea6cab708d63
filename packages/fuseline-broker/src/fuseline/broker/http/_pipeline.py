"""Every request goes through here: authenticate, parse, call the handler, answer.

Whatever goes wrong becomes a JSON error body with a stable code. Problems
with the request are 4xx; only a bug in the server is a 500, and it is
logged with its traceback while the client gets no internals.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import pydantic
from pydantic import BaseModel, ConfigDict

from fuseline.broker.http._auth import TokenCheck
from fuseline.broker.http._config import ServerConfig
from fuseline.broker.http._context import CallContext, FullBroker, Pools, ServerState
from fuseline.broker.http._errors import HttpError, error_body, internal_error_body, status_for
from fuseline.broker.http._parsing import check_size, parse_body, parse_path_param, parse_query
from fuseline.broker.http._routes import PATH_PARAM_ERRORS, ROUTES, Endpoint
from fuseline.errors import (
    BrokerUnavailableError,
    FuselineError,
    InvalidInputError,
    NotFoundError,
)
from fuseline.workflow.schema import definition_error

__all__ = ["Answer", "Service"]

log = logging.getLogger("fuseline.broker.http")

_PARSE_IN_THREAD_BYTES = 64 * 1024


class _NoQuery(BaseModel):
    # Routes without query parameters refuse any, like unknown body fields.
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Answer:
    """A response, independent of the web framework."""

    status: int
    body: bytes
    headers: dict[str, str]

    @classmethod
    def error(
        cls, status: int, error: FuselineError, headers: dict[str, str] | None = None
    ) -> Answer:
        """The JSON error answer for ``error``."""
        extra = dict(headers or {})
        if status == 401:
            extra.setdefault("WWW-Authenticate", 'Bearer realm="fuseline"')
        return cls(status, error_body(error), extra)


def _shutting_down() -> Answer:
    error = BrokerUnavailableError(
        "This broker process is shutting down; try again (another process may answer)."
    )
    return Answer.error(503, error, {"Retry-After": "1"})


class Service:
    """Answers the API's requests for one server process.

    Args:
        config: The server's settings.
        broker: The broker every request is served from.
        storage: The backend's kind, shown by the health route.
    """

    def __init__(self, config: ServerConfig, broker: FullBroker, storage: str) -> None:
        self.config = config
        self.broker = broker
        self.storage = storage
        self.state = ServerState()
        self.pools = Pools(config)
        self.tokens = TokenCheck(config.worker_tokens, config.client_tokens)

    async def handle(
        self,
        endpoint: Endpoint,
        *,
        headers: dict[str, str],
        path_params: dict[str, str],
        query: dict[str, list[str]],
        body: str | bytes,
    ) -> Answer:
        """Answer one request to ``endpoint`` (header names in lower case)."""
        self.state.enter()
        started = time.monotonic()
        log.debug("%s %s started", endpoint.method, endpoint.path)
        try:
            if self.state.stopping.is_set():
                answer = _shutting_down()
            else:
                answer = await self._answer(endpoint, headers, path_params, query, body)
        finally:
            self.state.leave()
        if self.state.stopping.is_set():
            # Make the client open a new connection, to a process that is not stopping.
            answer.headers["Connection"] = "close"
        log.debug(
            "%s %s -> %d (%.1f ms)",
            endpoint.method,
            endpoint.path,
            answer.status,
            (time.monotonic() - started) * 1000,
        )
        return answer

    async def _answer(
        self,
        endpoint: Endpoint,
        headers: dict[str, str],
        path_params: dict[str, str],
        query: dict[str, list[str]],
        body: str | bytes,
    ) -> Answer:
        try:
            if len(body) > _PARSE_IN_THREAD_BYTES:
                # Parsing megabytes of JSON takes a while; other requests go on meanwhile.
                context = await self.pools.quick.call(
                    functools.partial(self._context, endpoint, headers, path_params, query, body)
                )
            else:
                context = self._context(endpoint, headers, path_params, query, body)
            reply = await endpoint.handler(context)
            return Answer(reply.status, reply.body.model_dump_json().encode(), dict(reply.headers))
        except HttpError as exc:
            return Answer.error(exc.status, exc.error, exc.headers)
        except FuselineError as exc:
            return Answer.error(status_for(exc), exc)
        except pydantic.ValidationError as exc:
            # Raised by broker code validating what it was given; the
            # request's content was the problem, not the server.
            cause = definition_error(exc)
            log.info("%s %s: refused by validation: %s", endpoint.method, endpoint.path, cause)
            return Answer.error(status_for(cause), cause)
        except Exception:
            log.exception("%s %s failed unexpectedly", endpoint.method, endpoint.path)
            return Answer(500, internal_error_body(), {})

    def _context(
        self,
        endpoint: Endpoint,
        headers: dict[str, str],
        path_params: dict[str, str],
        query: dict[str, list[str]],
        body: str | bytes,
    ) -> CallContext:
        if endpoint.roles is not None:
            self.tokens.require(headers.get("authorization"), endpoint.roles)
        limits = self.config.limits
        parsed_body: BaseModel | None = None
        if endpoint.body is not None:
            parsed_body = parse_body(
                body, endpoint.body, limits.max_body_bytes, empty_ok=endpoint.body_optional
            )
        elif body:
            # Bodies are ignored on routes without one, but never unbounded.
            check_size(body, limits.max_body_bytes)
        parsed_query: BaseModel | None = None
        if endpoint.query is not None:
            parsed_query = parse_query(query, endpoint.query)
        elif query:
            parse_query(query, _NoQuery)
        path = {
            name: parse_path_param(
                path_params.get(name, ""),
                PATH_PARAM_ERRORS.get(name, NotFoundError),
                name.replace("_", " "),
            )
            for name in endpoint.path_params
        }
        return CallContext(
            broker=self.broker,
            config=self.config,
            state=self.state,
            pools=self.pools,
            storage=self.storage,
            path=path,
            headers=headers,
            body=parsed_body,
            query=parsed_query,
            body_size=len(body),
        )

    def fallback(self, method: str, path: str) -> Answer:
        """The answer for a path or method no route serves: 405 or 404."""
        allowed = sorted({e.method for e in ROUTES if e.pattern.match(path)})
        if allowed:
            return Answer.error(
                405,
                InvalidInputError(
                    f"{method} is not allowed on {path}; use {', '.join(allowed)}.",
                    details={"allowed": allowed},
                ),
                {"Allow": ", ".join(allowed)},
            )
        return Answer.error(
            404,
            NotFoundError(
                f"There is no route {path}; the API lives under /v1 (see /openapi.json)."
            ),
        )

    def close(self) -> None:
        """Stop the thread pools and close the broker."""
        self.pools.shutdown()
        self.broker.close()
