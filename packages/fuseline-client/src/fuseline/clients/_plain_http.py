"""A small HTTP/1.1 client for brokers reached over plain ``http://``, sync and asyncio.

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

The answer is parsed by one generator, :func:`_answer`, which asks for a
line, a number of bytes, or the rest of the stream, and is given them:
:class:`PlainHttp` reads them from a socket, :class:`AsyncPlainHttp` from an
asyncio stream, so both parse alike.

Failures are raised as the ``httpx`` exceptions that mean the same thing, so
that the client's retry rules (which depend on whether the request may have
reached the server) apply to both paths unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import urllib.request
from collections.abc import Generator, Mapping
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import httpx

from fuseline.clients._http_calls import Call
from fuseline.errors import InvalidInputError

__all__ = ["AsyncPlainHttp", "PlainHttp", "Reply", "plain_http_usable", "reply_of"]

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
# What the parser asks for: a line (at most _MAX_LINE + 1 bytes, less at the
# end of the stream), a number of bytes (less at the end), or all the rest.
_LINE, _BYTES, _REST = range(3)
_Need = tuple[int, int]
_Parser = Generator[_Need, bytes, tuple["Reply", bool]]


class Reply(NamedTuple):
    """What the client needs of an HTTP response."""

    status: int
    retry_after: str | None
    content: bytes


def reply_of(response: httpx.Response) -> Reply:
    """The :class:`Reply` of a response that went through httpx."""
    return Reply(response.status_code, response.headers.get("Retry-After"), response.content)


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
        parser = _answer()
        need = next(parser)
        reader = self._reader
        try:
            while True:
                kind, size = need
                if kind == _LINE:
                    need = parser.send(reader.readline(_MAX_LINE + 1))
                elif kind == _BYTES:
                    need = parser.send(reader.read(size))
                else:
                    need = parser.send(reader.read())
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the socket; a closed connection is not used again."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self._reader.close()
            sock.close()


def _answer() -> _Parser:
    """Parse one answer from what is sent in; returns it and whether to keep the connection."""
    while True:
        version, status = _status_line((yield _LINE, 0))
        headers = yield from _headers()
        if not 100 <= status < 200:  # informational: the real answer follows
            break
    tokens = headers.get("connection", "").lower()
    keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    if status in (204, 304):
        content = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        content = yield from _chunked()
    elif "content-length" in headers:
        size = _length(headers["content-length"])
        content = _whole((yield _BYTES, size), size)
    else:
        content, keep = (yield _REST, 0), False  # ends with the connection
    return Reply(status, headers.get("retry-after"), content), keep


def _line(line: bytes) -> bytes:
    if not line:
        raise _BadAnswer("the server closed the connection before answering in full")
    if len(line) > _MAX_LINE:
        raise _BadAnswer("a line of the answer is too long")
    return line


def _status_line(line: bytes) -> tuple[str, int]:
    parts = _line(line).decode("latin-1").split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
        raise _BadAnswer(f"not an HTTP/1.x status line: {' '.join(parts)[:80]!r}")
    return parts[0], int(parts[1])


def _headers() -> Generator[_Need, bytes, dict[str, str]]:
    """The header fields by lower-case name; repeated ones joined with commas."""
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = _line((yield _LINE, 0))
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


def _whole(content: bytes, size: int) -> bytes:
    if len(content) != size:
        raise _BadAnswer(f"the answer ended after {len(content)} of {size} bytes")
    return content


def _chunked() -> Generator[_Need, bytes, bytes]:
    parts = []
    while True:
        size_field = _line((yield _LINE, 0)).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise _BadAnswer(f"not a chunk size: {size_field[:20]!r}") from None
        if size == 0:
            break
        parts.append(_whole((yield _BYTES, size), size))
        if _line((yield _LINE, 0)) not in _BLANK:
            raise _BadAnswer("a chunk is longer than its size says")
    while _line((yield _LINE, 0)) not in _BLANK:
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


class _Requests:
    """The bytes of requests to one broker: head and body, to go out in one write.

    Raises:
        InvalidInputError: A fixed header value cannot go in a request.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        fixed = {
            "Host": host if self.port == 80 else f"{host}:{self.port}",
            "Accept-Encoding": "identity",
            **headers,
        }
        self._head_fields = "".join(_header(name, value) for name, value in fixed.items())

    def build(self, call: Call[Any]) -> bytes:
        """The request for ``call``.

        Raises:
            InvalidInputError: A header value cannot go in a request.
        """
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


class PlainHttp:
    """Kept-alive connections to one broker, each used by one thread at a time.

    Args:
        base_url: ``http://host:port`` with an optional path prefix.
        headers: Sent with every request.
        timeout: Seconds allowed to connect, send and read; a call's
            server-side wait is added to the read timeout.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float) -> None:
        self._requests = _Requests(base_url, headers)
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
        request = self._requests.build(call)
        connection = self._checkout()
        try:
            reply, keep = connection.exchange(request, self._timeout + call.wait)
        except TimeoutError as exc:
            connection.close()
            raise _read_timeout(self._timeout + call.wait) from exc
        except (OSError, _BadAnswer) as exc:
            connection.close()
            raise _read_error(exc) from exc
        if keep:
            self._checkin(connection)
        else:
            connection.close()
        return reply

    def _checkout(self) -> _Connection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.alive():
                    return connection
                connection.close()
        try:
            sock = socket.create_connection(
                (self._requests.host, self._requests.port), timeout=self._timeout
            )
        except TimeoutError as exc:
            raise _connect_timeout(self._timeout) from exc
        except OSError as exc:
            raise _connect_error(exc) from exc
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


class _Stream:
    """One kept-alive asyncio connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def alive(self) -> bool:
        """Whether this idle connection can carry another request (the server kept it)."""
        return not (self.reader.at_eof() or self.writer.is_closing())

    async def exchange(self, request: bytes) -> tuple[Reply, bool]:
        """Send ``request``, read the answer; also whether the connection stays usable.

        Raises:
            OSError: The connection failed.
            _BadAnswer: What came back is not a complete HTTP/1.x answer.
        """
        self.writer.write(request)
        await self.writer.drain()
        parser = _answer()
        need = next(parser)
        reader = self.reader
        try:
            while True:
                kind, size = need
                try:
                    if kind == _LINE:
                        data = await reader.readuntil(b"\n")
                    elif kind == _BYTES:
                        data = await reader.readexactly(size)
                    else:
                        data = await reader.read()
                except asyncio.IncompleteReadError as exc:
                    data = exc.partial  # the stream ended: the parser judges what came
                except asyncio.LimitOverrunError:
                    raise _BadAnswer("a line of the answer is too long") from None
                need = parser.send(data)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the connection; a closed connection is not used again."""
        self.writer.close()


class AsyncPlainHttp:
    """:class:`PlainHttp` for asyncio: kept-alive connections, one request at a time each.

    Use it from one event loop.

    Args:
        base_url: ``http://host:port`` with an optional path prefix.
        headers: Sent with every request.
        timeout: Seconds allowed to connect, and to send and read one answer;
            a call's server-side wait is added to the latter.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float) -> None:
        self._requests = _Requests(base_url, headers)
        self._timeout = timeout
        self._idle: list[_Stream] = []
        self._closed = False

    async def send(self, call: Call[Any]) -> Reply:
        """Send ``call`` and read the whole response; raises as :meth:`PlainHttp.send`."""
        request = self._requests.build(call)
        stream = await self._checkout()
        limit = self._timeout + call.wait
        try:
            async with asyncio.timeout(limit):
                reply, keep = await stream.exchange(request)
        except TimeoutError as exc:
            stream.close()
            raise _read_timeout(limit) from exc
        except (OSError, _BadAnswer) as exc:
            stream.close()
            raise _read_error(exc) from exc
        except BaseException:  # cancelled: the answer may still come, on nothing
            stream.close()
            raise
        if keep and not self._closed and len(self._idle) < _MAX_IDLE:
            self._idle.append(stream)
        else:
            stream.close()
        return reply

    async def _checkout(self) -> _Stream:
        while self._idle:
            stream = self._idle.pop()
            if stream.alive():
                return stream
            stream.close()
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._requests.host, self._requests.port, limit=_MAX_LINE + 1
                )
        except TimeoutError as exc:
            raise _connect_timeout(self._timeout) from exc
        except OSError as exc:
            raise _connect_error(exc) from exc
        return _Stream(reader, writer)

    async def close(self) -> None:
        """Close the idle connections; ones in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for stream in idle:
            stream.close()
        for stream in idle:
            with contextlib.suppress(OSError):
                await stream.writer.wait_closed()


def _read_timeout(seconds: float) -> httpx.ReadTimeout:
    return httpx.ReadTimeout(f"no answer within {seconds:g} s")


def _read_error(exc: BaseException) -> httpx.ReadError:
    return httpx.ReadError(f"{type(exc).__name__}: {exc}")


def _connect_timeout(seconds: float) -> httpx.ConnectTimeout:
    return httpx.ConnectTimeout(f"connecting took over {seconds:g} s")


def _connect_error(exc: OSError) -> httpx.ConnectError:
    return httpx.ConnectError(f"{type(exc).__name__}: {exc}")
