"""The states a step or a run can be in."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_STATES", "Status"]


class Status(StrEnum):
    """State of a step or of a whole run.

    ``PENDING`` and ``RUNNING`` are the only non-terminal states. A step that
    waits in the broker's queue is still ``PENDING``.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_terminal(self) -> bool:
        """Whether nothing will change this state any more."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})
