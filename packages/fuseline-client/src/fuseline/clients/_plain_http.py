"""A small HTTP/1.1 client for brokers reached over plain ``http://``.

``httpx`` spent about 0.3 ms of CPU on each request, half of what a worker
process spends per step, and the standard library's ``http.client`` still
about 0.16 ms, most of it parsing the answer's headers with the ``email``
package. Workers and dispatching clients usually talk to a broker on the
same network without TLS or a proxy; for them this module writes each
request with one ``sendall`` on a kept-alive socket and reads the answer
itself, for about 0.07 ms. It speaks the part of HTTP/1.1 a client of the
broker needs: bodies sized by ``Content-Length``, sent in chunks, or ended
by the connection; informational (1xx) answers skipped; ``Connection:
close`` and HTTP/1.0 honoured. Anything else (``https://``, an
``HTTP_PROXY`` or ``ALL_PROXY`` in the environment, a test transport) still
goes through ``httpx``.

Failures are raised as the ``httpx`` exceptions that mean the same thing, so
that the client's retry rules (which depend on whether the request may have
reached the server) apply to both paths unchanged.
"""

from __future__ import annotations

import select
import socket
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import httpx

from fuseline.clients._http_calls import Call
from fuseline.errors import InvalidInputError

__all__ = ["PlainHttp", "Reply", "plain_http_usable"]

# Idle connections kept per client; a worker uses at most a few at once.
_MAX_IDLE = 8
# Limits on an answer's head, against a peer that is not an HTTP server.
_MAX_LINE = 65536
_MAX_HEADERS = 100
# Methods whose requests say their length even without a body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What a header value cannot hold: each would end the header or the head.
_HEADER_BREAKS = str.maketrans("", "", "\r\n\x00")
# Characters a request target may keep as they are (percent escapes included).
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~"
_BLANK = (b"\r\n", b"\n")


class Reply(NamedTuple):
    """What the client needs of an HTTP response."""

    status: int
    retry_after: str | None
    content: bytes


class _BadAnswer(Exception):
    """The peer's answer is not HTTP/1.x, or it ended before it was complete."""


def plain_http_usable(base_url: str) -> bool:
    """Whether requests to ``base_url`` may skip ``httpx``: plain HTTP, no proxy."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    # With a proxy configured, httpx works out whether and how to use it.
    return not ({"http", "all"} & urllib.request.getproxies_environment().keys())


class _Connection:
    """One kept-alive connection: its socket and a buffered reader of it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._reader: BinaryIO = sock.makefile("rb")

    def alive(self) -> bool:
        """Whether this idle connection can carry another request.

        An idle connection the server has closed reads as ready (end of
        file); so would stray bytes, which leave it unusable too.
        """
        if self.sock is None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def exchange(self, request: bytes, timeout: float) -> tuple[Reply, bool]:
        """Send ``request``, read the answer; also whether the connection stays usable.

        Raises:
            TimeoutError: ``timeout`` seconds passed in one send or read.
            OSError: The connection failed.
            _BadAnswer: What came back is not a complete HTTP/1.x answer.
        """
        assert self.sock is not None  # noqa: S101 - only open connections are used
        self.sock.settimeout(timeout)
        self.sock.sendall(request)
        while True:
            version, status = self._status_line()
            headers = self._headers()
            if not 100 <= status < 200:  # informational: the real answer follows
                break
        tokens = headers.get("connection", "").lower()
        keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        if status in (204, 304):
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = self._chunked()
        elif "content-length" in headers:
            content = self._exactly(_length(headers["content-length"]))
        else:
            content, keep = self._reader.read(), False  # ends with the connection
        return Reply(status, headers.get("retry-after"), content), keep

    def close(self) -> None:
        """Close the socket; a closed connection is not used again."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self._reader.close()
            sock.close()

    def _line(self) -> bytes:
        line = self._reader.readline(_MAX_LINE + 1)
        if not line:
            raise _BadAnswer("the server closed the connection before answering in full")
        if len(line) > _MAX_LINE:
            raise _BadAnswer("a line of the answer is too long")
        return line

    def _status_line(self) -> tuple[str, int]:
        parts = self._line().decode("latin-1").split(None, 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
            raise _BadAnswer(f"not an HTTP/1.x status line: {' '.join(parts)[:80]!r}")
        return parts[0], int(parts[1])

    def _headers(self) -> dict[str, str]:
        """The header fields by lower-case name; repeated ones joined with commas."""
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if line in _BLANK:
                return headers
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise _BadAnswer(f"not a header line: {line[:80]!r}")
            key, value = name.strip().lower(), value.strip()
            if key not in headers:
                headers[key] = value
            elif key == "content-length":
                if headers[key] != value:
                    raise _BadAnswer("the answer gives two different lengths")
            else:
                headers[key] = f"{headers[key]}, {value}"
        raise _BadAnswer(f"the answer has more than {_MAX_HEADERS} header fields")

    def _exactly(self, size: int) -> bytes:
        content = self._reader.read(size)
        if len(content) != size:
            raise _BadAnswer(f"the answer ended after {len(content)} of {size} bytes")
        return content

    def _chunked(self) -> bytes:
        parts = []
        while True:
            size_field = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise _BadAnswer(f"not a chunk size: {size_field[:20]!r}") from None
            if size == 0:
                break
            parts.append(self._exactly(size))
            if self._line() not in _BLANK:
                raise _BadAnswer("a chunk is longer than its size says")
        while self._line() not in _BLANK:
            pass  # trailer fields: none that the client reads
        return b"".join(parts)


def _length(field: str) -> int:
    if not field.isdigit():
        raise _BadAnswer(f"not a Content-Length: {field[:20]!r}")
    return int(field)


def _header(name: str, value: str) -> str:
    if value.translate(_HEADER_BREAKS) != value:
        raise InvalidInputError(
            f"The {name} header cannot hold line breaks or NUL characters; check its value."
        )
    return f"{name}: {value}\r\n"


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
        host = f"[{self._host}]" if ":" in self._host else self._host
        fixed = {
            "Host": host if self._port == 80 else f"{host}:{self._port}",
            "Accept-Encoding": "identity",
            **headers,
        }
        self._head_fields = "".join(_header(name, value) for name, value in fixed.items())
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def send(self, call: Call[Any]) -> Reply:
        """Send ``call`` and read the whole response.

        Raises:
            httpx.ConnectError: No connection could be opened (nothing was sent).
            httpx.ConnectTimeout: Opening a connection took too long.
            httpx.ReadTimeout: The response took too long.
            httpx.ReadError: The connection failed once the request was on its way.
            InvalidInputError: A header value cannot go in a request (nothing was sent).
        """
        request = self._request(call)
        connection = self._checkout()
        try:
            reply, keep = connection.exchange(request, self._timeout + call.wait)
        except TimeoutError as exc:
            connection.close()
            raise httpx.ReadTimeout(f"no answer within {self._timeout + call.wait:g} s") from exc
        except (OSError, _BadAnswer) as exc:
            connection.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        if keep:
            self._checkin(connection)
        else:
            connection.close()
        return reply

    def _request(self, call: Call[Any]) -> bytes:
        """The request's head and body, to go out in one write."""
        target = quote(self._prefix + call.path, safe=_TARGET_SAFE)
        if call.params:
            target += "?" + urlencode(call.params, quote_via=quote)
        fields = [f"{call.method} {target} HTTP/1.1\r\n", self._head_fields]
        fields.extend(_header(name, value) for name, value in call.headers.items())
        body = call.body or b""
        if call.body is not None:
            fields.append("Content-Type: application/json\r\n")
        if call.body is not None or call.method in _BODY_METHODS:
            fields.append(f"Content-Length: {len(body)}\r\n")
        fields.append("\r\n")
        try:
            head = "".join(fields).encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidInputError(
                "A header value holds characters an HTTP header cannot carry; use ASCII."
            ) from None
        return head + body

    def _checkout(self) -> _Connection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.alive():
                    return connection
                connection.close()
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting took over {self._timeout:g} s") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock)

    def _checkin(self, connection: _Connection) -> None:
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
