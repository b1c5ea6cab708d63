"""The built-in brokers: one orchestration, three places to keep the state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fuseline.broker._storage_broker import StorageBroker
from fuseline.storage import MemoryStorage, SQLiteStorage

__all__ = ["MemoryBroker", "PostgresBroker", "SQLiteBroker"]


class MemoryBroker(StorageBroker):
    """A broker that keeps everything in this process's memory.

    For tests, notebooks and single-process demos: nothing survives the
    process, and only threads of this process can use it.

    Args:
        **options: Broker settings (``default_lease``, ``default_max_attempts``,
            ...), see :class:`StorageBroker`.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(MemoryStorage(), **options)


class SQLiteBroker(StorageBroker):
    """A broker that keeps its state in a SQLite file: the embedded default.

    Several broker processes on one machine may share the file.

    Args:
        path: The database file, created with its tables when missing.
        durable: Sync every commit to disk (survives power loss, not only crashes).
        **options: Broker settings, see :class:`StorageBroker`.
    """

    def __init__(
        self, path: str | Path = "fuseline-broker.sqlite3", *, durable: bool = True, **options: Any
    ) -> None:
        super().__init__(SQLiteStorage(path, durable=durable), **options)


class PostgresBroker(StorageBroker):
    """A broker that keeps its state in PostgreSQL: for production and scale-out.

    Any number of broker processes, on any number of machines, can share one
    database. Needs ``pip install "fuseline-broker[postgres]"``.

    Args:
        url: A ``postgresql://`` connection URL.
        max_connections: Most database connections this broker opens.
        **options: Broker settings, see :class:`StorageBroker`.
    """

    def __init__(self, url: str, *, max_connections: int = 16, **options: Any) -> None:
        from fuseline.storage._postgres import PostgresStorage

        super().__init__(PostgresStorage(url, max_connections=max_connections), **options)
