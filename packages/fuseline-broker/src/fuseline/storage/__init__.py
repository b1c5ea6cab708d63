"""Where the broker keeps its state: the ``RuntimeStorage`` interface and its backends.

Three backends ship with ``fuseline-broker``:

* :class:`MemoryStorage`: this process only, for tests and demos;
* :class:`SQLiteStorage`: a local file, the embedded default, safe for several
  broker processes on one machine;
* :class:`PostgresStorage`: production, any number of broker processes and
  machines (needs ``pip install "fuseline-broker[postgres]"``).

A broker never holds run state of its own: everything lives in the storage,
so a broker process can stop and another take over without losing anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fuseline.storage._base import (
    RuntimeStorage,
    Signal,
    StorageTransaction,
    StoredRun,
    StoredStep,
    StoredWorker,
    WorkflowKey,
)
from fuseline.storage._memory import MemoryStorage
from fuseline.storage._sqlite import SQLiteStorage

if TYPE_CHECKING:
    from fuseline.storage._postgres import PostgresStorage

__all__ = [
    "MemoryStorage",
    "PostgresStorage",
    "RuntimeStorage",
    "SQLiteStorage",
    "Signal",
    "StorageTransaction",
    "StoredRun",
    "StoredStep",
    "StoredWorker",
    "WorkflowKey",
]


def __getattr__(name: str) -> Any:
    # psycopg is an optional dependency: import it only when asked for.
    if name == "PostgresStorage":
        from fuseline.storage._postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
