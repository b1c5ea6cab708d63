"""Repository-wide pytest hooks, loaded for every test directory.

``FUSELINE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns a skipped test
marked ``postgres`` into a failed session: on CI a PostgreSQL server is always
available, so a skip there means the suite silently stopped testing the
production backend.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_POSTGRES = os.environ.get("FUSELINE_REQUIRE_POSTGRES", "") not in ("", "0")

_skipped_postgres_tests: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every PostgreSQL test that was skipped (an expected failure is not a skip)."""
    if report.skipped and "postgres" in report.keywords and not hasattr(report, "wasxfail"):
        _skipped_postgres_tests.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when PostgreSQL is required and a PostgreSQL test was skipped."""
    if REQUIRE_POSTGRES and _skipped_postgres_tests and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which PostgreSQL tests were skipped and why that fails the run."""
    if REQUIRE_POSTGRES and _skipped_postgres_tests:
        terminalreporter.section("FUSELINE_REQUIRE_POSTGRES", red=True, bold=True)
        terminalreporter.line(
            "FUSELINE_REQUIRE_POSTGRES is set, so skipping a PostgreSQL test fails the run. "
            "Set FUSELINE_TEST_DATABASE_URL to a reachable server. Skipped:"
        )
        for nodeid in _skipped_postgres_tests:
            terminalreporter.line(f"  {nodeid}")
