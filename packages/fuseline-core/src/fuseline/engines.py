"""Engines: how the steps of a workflow get executed.

``PoolEngine`` runs one workflow in this process with several threads.
``ProcessEngine`` (a worker that takes steps from a broker) lives in the
``fuseline-worker`` distribution and is imported from there on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fuseline.errors import MissingDependencyError

if TYPE_CHECKING:
    from fuseline.messages import RunDetails
    from fuseline.workflow import Workflow

__all__ = ["PoolEngine"]  # ProcessEngine resolves lazily, see __getattr__


class PoolEngine:
    """Run a workflow in-process, up to ``workers`` ready steps at a time in threads.

    Use it as ``workflow.run(inputs, engine=PoolEngine(4))`` or
    ``PoolEngine(4).run(workflow, inputs)``.
    """

    def __init__(self, workers: int = 4) -> None:
        if isinstance(workers, bool) or workers < 1:
            raise ValueError(f"PoolEngine needs at least one worker thread, got {workers!r}")
        self.workers = workers

    def run(self, workflow: Workflow, inputs: Mapping[str, Any] | None = None) -> RunDetails:
        """Run ``workflow`` with ``inputs`` and return the finished run."""
        return workflow.run(inputs, engine=self)

    def __repr__(self) -> str:
        return f"PoolEngine({self.workers})"


def __getattr__(name: str) -> Any:
    if name == "ProcessEngine":
        try:
            worker = importlib.import_module("fuseline.worker")
        except ImportError as exc:
            raise MissingDependencyError(
                "ProcessEngine is part of the fuseline-worker distribution. "
                'Install it with: pip install "fuseline[worker]"'
            ) from exc
        return worker.ProcessEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
