"""The storage brings its tables up to the current schema version on start.

A database left at an earlier version (as an older broker left it) is
upgraded in place, with what it holds kept.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from fuseline.status import Status
from fuseline.storage import PostgresStorage, SQLiteStorage
from fuseline.storage._sql import POSTGRESQL, SCHEMA_VERSION, SQLITE, migrations


def test_the_schema_version_counts_the_migrations() -> None:
    assert len(migrations(POSTGRESQL)) == len(migrations(SQLITE)) == SCHEMA_VERSION


def _reloptions(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT relname, reloptions FROM pg_class "
            "WHERE relname IN ('fuseline_steps', 'fuseline_runs')"
        ).fetchall()
    return {name: sorted(options or []) for name, options in rows}


def _version(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT max(version) FROM fuseline_schema_version").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_postgresql_tables_are_vacuumed_early(postgres_url: str) -> None:
    storage = PostgresStorage(postgres_url)
    storage.close()
    assert _version(postgres_url) == SCHEMA_VERSION
    for table, options in _reloptions(postgres_url).items():
        assert "autovacuum_vacuum_threshold=1000" in options, table
        assert "autovacuum_vacuum_scale_factor=0.01" in options, table


@pytest.mark.postgres
def test_a_postgresql_database_of_version_1_is_upgraded_with_its_runs(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE fuseline_schema_version (version INTEGER NOT NULL)")
        for statement in migrations(POSTGRESQL)[0]:
            connection.execute(statement)
        connection.execute("INSERT INTO fuseline_schema_version (version) VALUES (1)")
        connection.execute(
            "INSERT INTO fuseline_runs (run_id, workflow_id, version, inputs, status, created_at) "
            "VALUES ('kept', 'wf', '1', '{}', 'PENDING', 1.0)"
        )
    assert _reloptions(postgres_url) == {"fuseline_steps": [], "fuseline_runs": []}

    storage = PostgresStorage(postgres_url)
    try:
        kept = storage.atomic(lambda t: t.get_run("kept"), write=False)
    finally:
        storage.close()
    assert kept is not None and kept.status is Status.PENDING
    assert _version(postgres_url) == SCHEMA_VERSION
    assert all(_reloptions(postgres_url).values())


def test_an_sqlite_file_of_version_1_is_brought_to_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE fuseline_schema_version (version INTEGER NOT NULL)")
        for statement in migrations(SQLITE)[0]:
            connection.execute(statement)
        connection.execute("INSERT INTO fuseline_schema_version (version) VALUES (1)")
    storage = SQLiteStorage(path)
    storage.close()
    with sqlite3.connect(path) as connection:
        versions = [
            row[0] for row in connection.execute("SELECT version FROM fuseline_schema_version")
        ]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
