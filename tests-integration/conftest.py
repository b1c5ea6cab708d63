"""Shared setup of the cross-package suites.

The fault suite (``test_fault_*.py``) has slow cases marked ``chaos``. They
are deselected (not skipped) unless ``FUSELINE_CHAOS=1`` is set, as the
``chaos`` nox session does, or the ``-m`` expression names ``chaos``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Helpers such as seed_support.py sit beside the tests; pytest's importlib
# mode does not put this folder on sys.path by itself.
sys.path.insert(0, str(HERE))

from fault_harness import FaultCluster, fault_cluster  # noqa: E402
from postgres_support import postgres_admin_url, postgres_url  # noqa: E402

__all__ = ["backend", "chaos_cluster", "postgres_admin_url", "postgres_url"]

CHAOS = os.environ.get("FUSELINE_CHAOS", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the chaos cases unless they were asked for."""
    if CHAOS or "chaos" in (config.option.markexpr or ""):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("chaos") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(name, DATABASE_URL) of the broker's storage: a SQLite file, or a fresh database."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    return "sqlite", None


@pytest.fixture
def workers_find_fault_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let worker processes import ``fault_flows`` from this folder."""
    paths = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture
def chaos_cluster(
    backend: tuple[str, str | None], tmp_path: Path, workers_find_fault_flows: None
) -> Iterator[FaultCluster]:
    """A broker server on ``backend`` with no workers yet; see ``fault_harness.py``."""
    name, url = backend
    with fault_cluster(tmp_path, url, name) as running:
        yield running
