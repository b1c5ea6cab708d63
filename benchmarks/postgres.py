"""The PostgreSQL side: throwaway databases, server settings and pgbench, the yardstick.

``pgbench -N`` (simple update: per transaction one UPDATE, one SELECT and one
INSERT, committed) measures what this server, on this machine, can commit per
second. Dividing Fuseline's throughput over PostgreSQL by that figure gives a
number that compares across machines.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "PgbenchError",
    "backend_pids",
    "database",
    "pgbench_init",
    "pgbench_tps",
    "safe_url",
    "server_settings",
]

SETTINGS = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


class PgbenchError(RuntimeError):
    """pgbench is missing or failed."""


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def safe_url(url: str) -> str:
    """``url`` without its password, fit for messages."""
    parts = urlsplit(url)
    host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{parts.path}"


def _connect(url: str) -> object:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


@contextmanager
def database(server_url: str, purpose: str) -> Iterator[str]:
    """Create a database of our own on the server, yield its URL, drop it afterwards.

    Commits in it are synchronous (``synchronous_commit = on``), as in
    production, whatever the server's default.
    """
    name = f"fuseline_bench_{purpose}_{secrets.token_hex(4)}"
    with _connect(server_url) as admin:  # type: ignore[attr-defined]
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    try:
        yield _with_database(server_url, name)
    finally:
        with _connect(server_url) as admin:  # type: ignore[attr-defined]
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_pids(server_url: str, database_url: str) -> list[int]:
    """Process ids of the server processes connected to the database at ``database_url``."""
    name = urlsplit(database_url).path.lstrip("/")
    with _connect(server_url) as connection:  # type: ignore[attr-defined]
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def server_settings(url: str) -> dict[str, str]:
    """The server settings that decide how fast a commit is."""
    with _connect(url) as connection:  # type: ignore[attr-defined]
        return {name: str(connection.execute(f"SHOW {name}").fetchone()[0]) for name in SETTINGS}


def _pgbench_command(url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    executable = shutil.which("pgbench") or "/usr/bin/pgbench"
    if not os.path.exists(executable):
        raise PgbenchError("pgbench is not installed (apt install postgresql-client)")
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    command = [executable, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    if parts.username:
        command += ["-U", parts.username]
    return [*command, *args, parts.path.lstrip("/")], env


def _run(command: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(  # noqa: S603 - pgbench, found on PATH, with our arguments
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise PgbenchError(f"{' '.join(command[:1])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


def pgbench_init(url: str, scale: int) -> None:
    """Create pgbench's tables in the database at ``url``."""
    command, env = _pgbench_command(url, "-i", "-q", "-s", str(scale))
    _run(command, env, timeout=300)


def pgbench_tps(url: str, clients: int, seconds: int, threads: int = 2) -> float:
    """Transactions per second of ``pgbench -N`` (simple update) with ``clients`` clients."""
    command, env = _pgbench_command(
        url, "-N", "-n", "-c", str(clients), "-j", str(min(threads, clients)), "-T", str(seconds)
    )
    output = _run(command, env, timeout=seconds + 60)
    found = _TPS.search(output)
    if found is None:
        raise PgbenchError(f"no tps line in pgbench's output:\n{output[-500:]}")
    return float(found.group(1))
