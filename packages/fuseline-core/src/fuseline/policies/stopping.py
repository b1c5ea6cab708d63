"""Whether the step being executed is still wanted.

A worker that loses a step's lease (it was frozen, or cut off from the broker
for too long) cannot stop a step running in a thread: Python has no way to
interrupt a thread from outside. What it can do is tell the policies around
the step, so that they start nothing new: ``RetryPolicy`` asks
:func:`step_should_stop` before every retry and gives up when the answer is
yes. In-process runs never set a check, so nothing changes for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["step_should_stop", "stop_when"]

_check: ContextVar[Callable[[], bool] | None] = ContextVar("fuseline_stop_check", default=None)


def step_should_stop() -> bool:
    """True when whoever runs the current step no longer wants its result."""
    check = _check.get()
    return check is not None and check()


@contextmanager
def stop_when(check: Callable[[], bool] | None) -> Iterator[None]:
    """Make :func:`step_should_stop` answer with ``check()`` inside the block."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)
