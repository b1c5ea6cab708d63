"""Shared setup of the worker's tests.

``cluster`` starts a real broker server (on a SQLite file, and again on a
fresh PostgreSQL database) for the tests that run real worker processes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Helpers (worker_fakes.py, ...) sit beside the tests; pytest's importlib mode
# does not put this folder on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

from worker_processes import Cluster, open_cluster, postgres_admin_url, postgres_url

__all__ = ["cluster", "postgres_admin_url", "postgres_url"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A broker server (SQLite file or a fresh PostgreSQL database) with a client.

    Workers the test starts are stopped with SIGTERM at the end and must exit 0.
    """
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    with open_cluster(tmp_path, database_url) as running:
        yield running
