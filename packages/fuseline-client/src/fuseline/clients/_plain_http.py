"""A small HTTP/1.1 client for brokers reached over plain ``http://``.

``httpx`` spent about 0.3 ms of CPU on each request, half of what a worker
process spends per step. Workers and dispatching clients usually talk to a
broker on the same network without TLS or a proxy; for them this module
sends each request over a kept-alive ``http.client`` connection, at about a
quarter of that cost. Anything else (``https://``, an ``HTTP_PROXY`` or
``ALL_PROXY`` in the environment, a test transport) still goes through
``httpx``.

Failures are raised as the ``httpx`` exceptions that mean the same thing, so
that the client's retry rules (which depend on whether the request may have
reached the server) apply to both paths unchanged.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import httpx

from fuseline.clients._http_calls import Call

__all__ = ["PlainHttp", "Reply", "plain_http_usable"]

# Idle connections kept per client; a worker uses at most a few at once.
_MAX_IDLE = 8


class Reply(NamedTuple):
    """What the client needs of an HTTP response."""

    status: int
    retry_after: str | None
    content: bytes


def plain_http_usable(base_url: str) -> bool:
    """Whether requests to ``base_url`` may skip ``httpx``: plain HTTP, no proxy."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    # With a proxy configured, httpx works out whether and how to use it.
    return not ({"http", "all"} & urllib.request.getproxies_environment().keys())


def _alive(connection: http.client.HTTPConnection) -> bool:
    # An idle connection the server has closed reads as ready (end of file);
    # so would stray bytes, which leave it unusable too.
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class PlainHttp:
    """Kept-alive connections to one broker, each used by one thread at a time.

    Args:
        base_url: ``http://host:port`` with an optional path prefix.
        headers: Sent with every request.
        timeout: Seconds allowed to connect, send and read; a call's
            server-side wait is added to the read timeout.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def send(self, call: Call[Any]) -> Reply:
        """Send ``call`` and read the whole response.

        Raises:
            httpx.ConnectError: No connection could be opened (nothing was sent).
            httpx.ConnectTimeout: Opening a connection took too long.
            httpx.ReadTimeout: The response took too long.
            httpx.ReadError: The connection failed once the request was on its way.
        """
        connection = self._checkout()
        target = self._prefix + call.path
        if call.params:
            target += "?" + urlencode(call.params, quote_via=quote)
        headers = {**self._headers, **call.headers}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        try:
            assert connection.sock is not None  # noqa: S101 - _checkout connects
            connection.sock.settimeout(self._timeout + call.wait)
            connection.request(call.method, target, body=call.body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except TimeoutError as exc:
            connection.close()
            raise httpx.ReadTimeout(f"no answer within {self._timeout + call.wait:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        if response.will_close:
            connection.close()
        else:
            self._checkin(connection)
        return Reply(response.status, response.getheader("Retry-After"), content)

    def _checkout(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if _alive(connection):
                    return connection
                connection.close()
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.connect()
        except TimeoutError as exc:
            connection.close()
            raise httpx.ConnectTimeout(f"connecting took over {self._timeout:g} s") from exc
        except OSError as exc:
            connection.close()
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        assert connection.sock is not None  # noqa: S101 - connect() sets it
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _checkin(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; ones in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
