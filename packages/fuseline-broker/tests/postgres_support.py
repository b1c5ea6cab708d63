"""A PostgreSQL server for the tests, and a fresh database for each test.

Where the server comes from, in order (DESIGN.md section 7):

1. ``FUSELINE_TEST_DATABASE_URL``, an admin URL of a running server (CI sets it);
2. otherwise a private, throwaway cluster started with ``initdb`` and
   ``pg_ctl`` when PostgreSQL's server programs are installed, stopped and
   deleted at the end of the test session;
3. otherwise the test is skipped, with the reason shown (and the run fails
   when ``FUSELINE_REQUIRE_POSTGRES=1``, see the repository's conftest.py).

Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["postgres_admin_url", "postgres_url"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_programs() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


def cluster_folder(prefix: str, owner: pwd.struct_passwd | None) -> Path:
    """A new folder for a private cluster, owned by ``owner`` when given.

    When the server runs as another user (``owner``), the folder goes under
    the system's /tmp rather than ``$TMPDIR``: nox points that into the
    checkout, whose parents that user may not be allowed to enter.
    """
    base = "/tmp" if owner is not None and os.path.isdir("/tmp") else None
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


@contextlib.contextmanager
def _private_cluster(programs: tuple[str, str]) -> Iterator[str]:
    """Start a cluster in a temporary directory; yield its admin URL."""
    initdb, pg_ctl = programs
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root; run it as the postgres user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run a private cluster")
        prefix = ["runuser", "-u", "postgres", "--"]
    folder = cluster_folder("fuseline-pg-", owner)
    data = folder / "data"
    port = _free_port()
    log = folder / "server.log"
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The admin URL of the PostgreSQL server the tests use (see the module docstring)."""
    url = os.environ.get("FUSELINE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    programs = _server_programs()
    if programs is None:
        pytest.skip(
            "no PostgreSQL to test: set FUSELINE_TEST_DATABASE_URL, or install the server "
            "programs (initdb, pg_ctl) for a private throwaway cluster"
        )
    with _private_cluster(programs) as admin_url:
        yield admin_url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is needed for PostgreSQL tests")
    name = f"fuseline_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(postgres_admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
