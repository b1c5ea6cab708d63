"""Measure the broker server's CPU per request, the cost under every HTTP figure.

::

    python benchmarks/request_cost.py [--postgres-url URL] [--requests N]

Starts the broker server (``python -m fuseline.broker.http``) with tokens,
over the memory backend and over a fresh PostgreSQL database, and sends it
three kinds of request from two threads over kept-alive connections of the
standard library (so that the client costs little): ``GET /health``,
which touches no storage and so shows what the web layer alone costs;
``GET /v1/runs/{id}``, one short read transaction; and ``POST /v1/runs``, a
dispatch with its workflow's schema. It prints the CPU time the server's
processes used per request (user + system, from ``/proc``) and the requests
per second. The figures move with the machine; compare them between commits
on one machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench_workflows import SINGLE
from options import DEFAULT_POSTGRES
from postgres import database
from processes import ProcessGroup, free_port, wait_until
from resources import cpu_seconds, descendants

_CLIENTS = 2

Request = Callable[[int], tuple[str, str, bytes | None]]


def _send(port: int, headers: dict[str, str], request: Request, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(count):
        method, path, body = request(n)
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path} answered {response.status}")
    connection.close()


def _measure(
    port: int, server: list[int], headers: dict[str, str], request: Request, total: int
) -> tuple[float, float]:
    """CPU ms per request and requests per second for ``total`` requests."""
    _send(port, headers, request, 50)  # warm-up
    before = cpu_seconds(server)
    started = time.perf_counter()
    each = total // _CLIENTS
    threads = [
        threading.Thread(target=_send, args=(port, headers, request, each)) for _ in range(_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    used = cpu_seconds(server) - before
    return used / (each * _CLIENTS) * 1000, each * _CLIENTS / elapsed


def _healthy(port: int) -> bool:
    try:
        _send(port, {}, lambda n: ("GET", "/health", None), 1)
    except (OSError, RuntimeError):
        return False
    return True


def measure_backend(label: str, database_url: str, total: int, work_dir: Path) -> None:
    """Start a server over ``database_url`` and print its cost per request."""
    token = secrets.token_urlsafe(32)
    port = free_port()
    group = ProcessGroup(work_dir, {})
    broker = group.start(
        f"broker-{label}",
        ["-m", "fuseline.broker.http", "--port", str(port), "--database-url", database_url],
        {"FUSELINE_CLIENT_TOKEN": token, "FUSELINE_WORKER_TOKEN": secrets.token_urlsafe(32)},
    )
    try:
        wait_until(lambda: _healthy(port), 60, "the broker", pause=0.1)
        server = [broker.pid, *descendants(broker.pid)]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        schema = SINGLE.to_schema().model_dump(mode="json")

        def dispatch(n: int) -> tuple[str, str, bytes | None]:
            return "POST", "/v1/runs", json.dumps({"workflow": schema, "inputs": {"n": n}}).encode()

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/runs", body=dispatch(0)[2], headers=headers)
        run_id = json.loads(connection.getresponse().read())["run_id"]
        connection.close()
        requests: list[tuple[str, Request]] = [
            ("GET /health", lambda n: ("GET", "/health", None)),
            ("GET /v1/runs/{id}", lambda n: ("GET", f"/v1/runs/{run_id}", None)),
            ("POST /v1/runs", dispatch),
        ]
        for name, request in requests:
            cpu_ms, rate = _measure(port, server, headers, request, total)
            print(f"{label:<12} {name:<18} {cpu_ms:8.3f} {rate:10.0f}")
    finally:
        group.stop_all()


def main(argv: list[str] | None = None) -> int:
    """Measure the memory backend, then PostgreSQL unless told not to."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--requests", type=int, default=4000, help="per kind and backend")
    parser.add_argument("--no-postgres", action="store_true", help="memory backend only")
    args = parser.parse_args(argv)
    print(f"{'backend':<12} {'request':<18} {'CPU ms':>8} {'requests/s':>10}")
    with tempfile.TemporaryDirectory(prefix="fuseline-request-cost-") as folder:
        print(f"(server logs in {folder})", file=sys.stderr)
        work_dir = Path(folder)
        measure_backend("memory", "memory://", args.requests, work_dir)
        if not args.no_postgres:
            with database(args.postgres_url, "cost") as url:
                measure_backend("postgresql", url, args.requests, work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
