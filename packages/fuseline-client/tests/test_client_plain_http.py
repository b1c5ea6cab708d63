"""The clients' own HTTP/1.1 path for plain http:// brokers, against real sockets.

A small standard-library server plays the network: it records what arrives
and can answer slowly, close connections, or not answer at all. The real
broker is exercised through the sync path by the server end-to-end suites;
the cases that parse answers run on both the sync and the asyncio path
(``flavour``), which share their parser.
"""

# Tokens here are made-up test values, not secrets.
# ruff: noqa: S105

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fuseline import errors as fe
from fuseline.clients import AsyncHttpBrokerClient, Backoff, HttpBrokerClient
from fuseline.clients._http_calls import Call
from fuseline.clients._plain_http import AsyncPlainHttp, PlainHttp, Reply, plain_http_usable
from fuseline.workflow import StepSchema, WorkflowSchema

FAST = Backoff(retries=2, initial=0.001, maximum=0.001)
TOKEN = "client-token-0123456789abcdef"
SCHEMA = WorkflowSchema(workflow_id="flow", steps=(StepSchema(name="a"),), outputs=("a",))
# The fake server drops a kept-alive connection idle this long, as real ones do.
IDLE_TIMEOUT = 0.2


class Seen:
    """What the fake network saw."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.closed = 0
        self.lock = threading.Lock()


Answer = Callable[[BaseHTTPRequestHandler, Seen], None]


def answer_json(body: Any, status: int = 200, close: bool = False) -> Answer:
    def answer(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if close:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def never_answer(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
    time.sleep(1.0)
    handler.close_connection = True


@pytest.fixture
def network() -> Iterator[tuple[str, Seen, list[Answer]]]:
    seen = Seen()
    answers: list[Answer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = IDLE_TIMEOUT

        def setup(self) -> None:
            super().setup()
            with seen.lock:
                seen.connections += 1

        def finish(self) -> None:
            super().finish()
            with seen.lock:
                seen.closed += 1

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with seen.lock:
                seen.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
            answer(self, seen)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, answers
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_plain_http_without_a_proxy_skips_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert plain_http_usable("http://broker:8000")
    assert not plain_http_usable("https://broker:8000")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not plain_http_usable("http://broker:8000")
    with HttpBrokerClient("http://broker:8000") as proxied:
        assert proxied._plain is None
    monkeypatch.delenv("HTTP_PROXY")
    with HttpBrokerClient("http://broker:8000") as direct:
        assert direct._plain is not None
    mocked = httpx.MockTransport(lambda request: httpx.Response(200))
    with HttpBrokerClient("http://broker:8000", transport=mocked) as scripted:
        assert scripted._plain is None


def test_requests_carry_token_prefix_query_and_body_over_one_kept_connection(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"items": [], "next_cursor": None}))
    with HttpBrokerClient(f"{url}/prefix", TOKEN, backoff=FAST) as client:
        client.list_runs(workflow_id="a flow/1", limit=5)
        client.list_runs(limit=6)
        client.list_runs(limit=7)
    assert seen.connections == 1
    first = seen.requests[0]
    assert first["method"] == "GET"
    assert first["path"] == "/prefix/v1/runs?limit=5&workflow_id=a%20flow%2F1"
    assert first["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert first["headers"]["accept"] == "application/json"
    later = [r["path"] for r in seen.requests[1:]]
    assert later == ["/prefix/v1/runs?limit=6", "/prefix/v1/runs?limit=7"]


def test_a_json_body_is_sent_with_its_content_type(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"worker_id": "w-1"}, status=201))
    with HttpBrokerClient(url, TOKEN, backoff=FAST) as client:
        assert client.register_worker([SCHEMA], name="one") == "w-1"
    request = seen.requests[0]
    assert request["headers"]["content-type"] == "application/json"
    sent = json.loads(request["body"])
    assert sent["name"] == "one"
    assert [w["workflow_id"] for w in sent["workflows"]] == ["flow"]


def test_a_connection_the_server_closed_is_replaced_not_reported(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"items": [], "next_cursor": None}, close=True))
    with HttpBrokerClient(url, TOKEN, backoff=Backoff(retries=0)) as client:
        for _ in range(3):
            client.list_runs()
    assert len(seen.requests) == 3
    assert seen.connections == 3


def test_an_idle_connection_the_server_dropped_is_not_used_again(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"items": [], "next_cursor": None}))
    with HttpBrokerClient(url, TOKEN, backoff=Backoff(retries=0)) as client:
        client.list_runs()
        deadline = time.monotonic() + 10
        while seen.closed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen.closed == 1
        client.list_runs()
    assert len(seen.requests) == 2
    assert seen.connections == 2


def test_errors_come_back_as_the_broker_sent_them(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, _, answers = network
    answers.append(answer_json({"error": {"code": "run_not_found", "message": "no such run"}}, 404))
    with HttpBrokerClient(url, TOKEN, backoff=FAST) as client, pytest.raises(fe.RunNotFoundError):
        client.get_run("r-1")


def test_a_refused_connection_is_retried_then_reported_without_the_token() -> None:
    port = closed_port()
    with (
        HttpBrokerClient(f"http://127.0.0.1:{port}", TOKEN, backoff=FAST) as client,
        pytest.raises(fe.BrokerUnavailableError) as caught,
    ):
        client.list_workers()
    assert "ConnectError" in str(caught.value)
    assert TOKEN not in str(caught.value)
    plain = PlainHttp(f"http://127.0.0.1:{port}", {}, timeout=1.0)
    with pytest.raises(httpx.ConnectError):
        plain.send(Call("GET", "/v1/health", lambda content: content))


def test_a_silent_server_times_out_and_an_unsafe_call_is_not_repeated(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(never_answer)
    with (
        HttpBrokerClient(url, TOKEN, timeout=0.1, backoff=FAST) as client,
        pytest.raises(fe.BrokerUnavailableError, match="ReadTimeout"),
    ):
        client.get_steps("w-1")
    assert len(seen.requests) == 1


def test_a_long_poll_gets_its_wait_on_top_of_the_read_timeout(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network

    def slow(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        time.sleep(0.5)
        answer_json({"assignments": []})(handler, seen)

    answers.append(slow)
    with HttpBrokerClient(url, TOKEN, timeout=0.3, backoff=Backoff(retries=0)) as client:
        assert client.get_steps("w-1", wait=0.5) == []
    assert 0.4 < json.loads(seen.requests[0]["body"])["wait"] <= 0.5


def raw_answer(data: bytes, close: bool = False) -> Answer:
    """An answer written byte for byte, as a server that is not Python's might."""

    def answer(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        handler.close_connection = close

    return answer


RUNS = b'{"items": [], "next_cursor": null}'


def list_runs_twice(url: str, flavour: str = "sync") -> None:
    """Two calls whose answers must both parse as an empty page of runs."""
    if flavour == "asyncio":

        async def twice() -> None:
            async with AsyncHttpBrokerClient(url, TOKEN, backoff=Backoff(retries=0)) as client:
                assert (await client.list_runs()).items == []
                assert (await client.list_runs()).items == []

        asyncio.run(twice())
        return
    with HttpBrokerClient(url, TOKEN, backoff=Backoff(retries=0)) as client:
        assert client.list_runs().items == []
        assert client.list_runs().items == []


def send_once(url: str, flavour: str, timeout: float = 2.0) -> Reply:
    """``GET /v1/runs`` through the bare transport of the flavour."""
    call = Call("GET", "/v1/runs", lambda content: content)
    if flavour == "asyncio":

        async def send() -> Reply:
            plain = AsyncPlainHttp(url, {}, timeout=timeout)
            try:
                return await plain.send(call)
            finally:
                await plain.close()

        return asyncio.run(send())
    plain = PlainHttp(url, {}, timeout=timeout)
    try:
        return plain.send(call)
    finally:
        plain.close()


@pytest.fixture(params=["sync", "asyncio"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_chunked_answer_is_read_whole_and_its_connection_kept(
    network: tuple[str, Seen, list[Answer]], flavour: str
) -> None:
    url, seen, answers = network
    chunked = b"".join(
        f"{len(part):x};note=1\r\n".encode() + part + b"\r\n" for part in (RUNS[:10], RUNS[10:])
    )
    answers.append(
        raw_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
            b"\r\n" + chunked + b"0\r\nX-Trailer: ignored\r\n\r\n"
        )
    )
    list_runs_twice(url, flavour)
    assert (len(seen.requests), seen.connections) == (2, 1)


def test_an_answer_without_a_length_ends_with_its_connection(
    network: tuple[str, Seen, list[Answer]], flavour: str
) -> None:
    url, seen, answers = network
    answers.append(
        raw_answer(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + RUNS, True)
    )
    list_runs_twice(url, flavour)
    assert (len(seen.requests), seen.connections) == (2, 2)


def test_an_informational_answer_is_skipped_for_the_one_that_follows(
    network: tuple[str, Seen, list[Answer]], flavour: str
) -> None:
    url, _, answers = network
    answers.append(
        raw_answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: "
            + str(len(RUNS)).encode()
            + b"\r\nRetry-After: 3\r\n\r\n"
            + RUNS
        )
    )
    reply = send_once(url, flavour)
    assert (reply.status, reply.retry_after, reply.content) == (200, "3", RUNS)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP at all
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + RUNS,  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "short-body", "two-lengths", "bad-chunk"],
)
def test_an_answer_that_is_not_whole_http_is_a_read_error(
    network: tuple[str, Seen, list[Answer]], answer: bytes, flavour: str
) -> None:
    url, seen, answers = network
    answers.append(raw_answer(answer, close=True))
    with pytest.raises(httpx.ReadError):
        send_once(url, flavour)
    # An unsafe call is not repeated after a read error, and says why it failed.
    with (
        HttpBrokerClient(url, TOKEN, backoff=FAST) as client,
        pytest.raises(fe.BrokerUnavailableError, match="ReadError"),
    ):
        client.get_steps("w-1")
    assert len(seen.requests) == 2


@pytest.mark.parametrize("key", ["two\r\nX-Injected: 1", "clé", "with space", ""])
def test_an_idempotency_key_that_cannot_be_sent_is_refused_before_sending(
    network: tuple[str, Seen, list[Answer]], key: str
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"run_id": "r-1", "workflow_id": "flow", "workflow_version": "1"}))
    with (
        HttpBrokerClient(url, TOKEN, backoff=FAST) as client,
        pytest.raises(fe.InvalidInputError, match="idempotency_key"),
    ):
        client.dispatch_workflow(SCHEMA, idempotency_key=key)
    assert seen.requests == []


def test_a_header_that_would_break_the_request_is_refused_before_sending(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, _ = network
    with pytest.raises(fe.InvalidInputError):
        HttpBrokerClient(url, "token\r\nX-Injected: 1")
    with pytest.raises(fe.InvalidInputError, match="line breaks"):
        PlainHttp(url, {"Authorization": "Bearer t\r\nX-Injected: 1"}, timeout=2.0)
    plain = PlainHttp(url, {}, timeout=2.0)
    with pytest.raises(fe.InvalidInputError, match="ASCII"):
        plain.send(Call("GET", "/v1/runs", lambda c: c, headers={"X-Name": "Zoë ✓"}))
    plain.close()
    assert seen.requests == []


def test_the_asyncio_client_skips_httpx_and_keeps_one_connection(
    network: tuple[str, Seen, list[Answer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"items": [], "next_cursor": None}))

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went through httpx")

    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)

    async def three() -> None:
        async with AsyncHttpBrokerClient(f"{url}/prefix", TOKEN, backoff=FAST) as client:
            await client.list_runs(workflow_id="a flow/1", limit=5)
            await client.list_runs(limit=6)
            await client.list_runs(limit=7)

    asyncio.run(three())
    assert seen.connections == 1
    first = seen.requests[0]
    assert first["path"] == "/prefix/v1/runs?limit=5&workflow_id=a%20flow%2F1"
    assert first["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert [r["path"] for r in seen.requests[1:]] == [
        "/prefix/v1/runs?limit=6",
        "/prefix/v1/runs?limit=7",
    ]


def test_the_asyncio_client_replaces_an_idle_connection_the_server_dropped(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    url, seen, answers = network
    answers.append(answer_json({"items": [], "next_cursor": None}))

    async def twice() -> None:
        async with AsyncHttpBrokerClient(url, TOKEN, backoff=Backoff(retries=0)) as client:
            await client.list_runs()
            deadline = time.monotonic() + 10
            while seen.closed < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert seen.closed == 1
            await client.list_runs()

    asyncio.run(twice())
    assert (len(seen.requests), seen.connections) == (2, 2)


def test_the_asyncio_path_reports_refused_and_silent_servers_as_httpx_does(
    network: tuple[str, Seen, list[Answer]],
) -> None:
    with pytest.raises(httpx.ConnectError):
        send_once(f"http://127.0.0.1:{closed_port()}", "asyncio", timeout=1.0)
    url, seen, answers = network
    answers.append(never_answer)

    async def claim() -> None:
        async with AsyncHttpBrokerClient(url, TOKEN, timeout=0.1, backoff=FAST) as client:
            await client.get_steps("w-1")

    # A claim that may have reached the server is not sent again.
    with pytest.raises(fe.BrokerUnavailableError, match="ReadTimeout"):
        asyncio.run(claim())
    assert len(seen.requests) == 1
