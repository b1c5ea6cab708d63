"""Long polls waiting in this broker process, so that a dispatch can serve one directly.

A worker whose claim found nothing waits for work. Without help, a dispatch
commits its run, wakes the waiting claim, and the claim leases the new step
in a transaction of its own. When the dispatching transaction leases the
step to a waiting worker itself, a run takes one transaction (and one commit
flushed to disk) fewer: the waiter gets the assignment as soon as the
dispatch has committed.

A waiter is taken out of the queue before anything is claimed for it, under
the queue's lock; a long poll whose time runs out meanwhile can then no
longer leave empty-handed, and waits for what was claimed for it instead.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from fuseline.messages import StepAssignment
from fuseline.storage import WorkflowKey

__all__ = ["Waiter", "Waiters"]


@dataclass(eq=False)
class Waiter:
    """One long poll that found nothing ready.

    Attributes:
        worker_id: Who waits.
        workflows: The workflow versions the worker runs.
        limit: How many steps it asked for.
        assignments: What a dispatch claimed for it; empty when the dispatch
            failed or found nothing it could take, and the poll should go on.
    """

    worker_id: str
    workflows: Collection[WorkflowKey]
    limit: int
    assignments: list[StepAssignment] = field(default_factory=list)
    _delivered: threading.Event = field(default_factory=threading.Event)

    def deliver(self, assignments: list[StepAssignment]) -> None:
        """Hand over what was claimed for this waiter (possibly nothing)."""
        self.assignments = assignments
        self._delivered.set()

    def is_delivered(self) -> bool:
        """Whether a dispatch handed something over (or gave the waiter back)."""
        return self._delivered.is_set()

    def wait_delivered(self) -> list[StepAssignment]:
        """Wait for the dispatch that took this waiter to finish; what it claimed."""
        self._delivered.wait()
        return self.assignments


class Waiters:
    """The long polls of this process that wait for work, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[Waiter, None] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, waiter: Waiter) -> None:
        """Queue ``waiter``."""
        with self._lock:
            self._queue[waiter] = None

    def withdraw(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out of the queue; False when a dispatch took it first."""
        with self._lock:
            if waiter not in self._queue:
                return False
            del self._queue[waiter]
            return True

    def take(self, key: WorkflowKey) -> Waiter | None:
        """Take out the oldest waiter that runs the workflow version ``key``."""
        if not self._queue:  # the common case under load: no one waits
            return None
        with self._lock:
            for waiter in self._queue:
                if key in waiter.workflows:
                    del self._queue[waiter]
                    return waiter
        return None
