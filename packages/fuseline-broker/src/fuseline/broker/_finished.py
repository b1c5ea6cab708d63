"""Runs this broker process saw finish, kept for callers waiting on them here.

A run's details never change once it finished (no step of it is left to
report), so the transaction that finished a run can hand its rows to the
waiters of the same process, which then need no transaction of their own to
read them. Waiters in other processes, or waiting on a run finished longer
ago than the last ``capacity`` runs, read the storage as usual.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fuseline.broker._records import run_details
from fuseline.messages import RunDetails
from fuseline.storage import StoredRun, StoredStep
from fuseline.workflow.rules import RunGraph

__all__ = ["FinishedRuns"]


class FinishedRuns:
    """The last ``capacity`` runs that finished in this process, by run id."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, tuple[RunGraph, StoredRun, list[StoredStep]]] = OrderedDict()

    def add(self, graph: RunGraph, run: StoredRun, rows: list[StoredStep]) -> None:
        """Keep a run that just finished (called after its transaction committed)."""
        with self._lock:
            self._runs[run.run_id] = (graph, run, rows)
            while len(self._runs) > self._capacity:
                self._runs.popitem(last=False)

    def get(self, run_id: str) -> RunDetails | None:
        """The finished run's details, when this process saw it finish recently."""
        with self._lock:
            kept = self._runs.get(run_id)
        return None if kept is None else run_details(*kept)

    def clear(self) -> None:
        """Forget every run (their rows may have been deleted)."""
        with self._lock:
            self._runs.clear()
