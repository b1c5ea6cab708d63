"""The steps a worker holds: a lease each, a slot each, and where each one is at.

A slot is taken when a step is claimed and given back only once the step has
finished *and* its report was delivered (or dropped), so a worker never holds
more leases than its concurrency, even while the broker is unreachable and
reports wait to be delivered.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fuseline.messages import StepAssignment

__all__ = ["HeldStep", "HeldSteps", "Phase"]


class Phase(enum.Enum):
    """Where a held step is."""

    RUNNING = "running"
    REPORTING = "reporting"


@dataclass(eq=False)
class HeldStep:
    """One claimed step, from its assignment until its slot is given back.

    Attributes:
        assignment: What the broker handed out.
        phase: Running, or finished with its report waiting to be delivered.
        abandoned: Why the worker stopped caring (lease lost, run cancelled,
            shutting down); None while the step is still the worker's.
        cancel: Stops the execution when that is possible (async task, child
            process); None for a thread, which cannot be stopped.
        lease_seconds: How long the lease was when claimed, if it had a deadline.
        lease_until: When (``time.monotonic``) the lease runs out unless a
            heartbeat extends it; counted from when the claim or beat was sent,
            so it is never later than the broker's deadline.
    """

    assignment: StepAssignment
    phase: Phase = Phase.RUNNING
    abandoned: str | None = None
    cancel: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)
    lease_seconds: float | None = None
    lease_until: float | None = None

    def __post_init__(self) -> None:
        if self.assignment.deadline is not None:
            deadline = self.assignment.deadline
            if deadline.tzinfo is None:
                deadline = deadline.replace(tzinfo=UTC)
            self.lease_seconds = (deadline - datetime.now(UTC)).total_seconds()
            self.lease_until = self.started + self.lease_seconds

    def extended(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` (monotonic) extended the lease."""
        if self.lease_seconds is not None:
            self.lease_until = max(self.lease_until or 0.0, sent_at + self.lease_seconds)

    def lost_hold(self) -> bool:
        """Whether the worker gave up the step or its lease has run out, as far as it knows."""
        if self.abandoned is not None:
            return True
        return self.lease_until is not None and time.monotonic() > self.lease_until

    @property
    def token(self) -> str | None:
        """The lease token."""
        return self.assignment.lease_token

    @property
    def label(self) -> str:
        """How log lines name the step."""
        a = self.assignment
        return f"step {a.step_name!r} of run {a.instance_id} (attempt {a.attempt})"


class HeldSteps:
    """The held steps and the slots they occupy, shared by the worker's threads.

    Args:
        capacity: How many steps may be held at once (the concurrency).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Reentrant: stop() may be called from a signal handler that
        # interrupted this very thread while it held the lock.
        self._cond = threading.Condition(threading.RLock())
        self._held: list[HeldStep] = []
        self._reserved = 0
        self._generation = 0
        # Threads in wait_for_change: a hand-over frees no slot and ends no
        # step, so only they need waking for it.
        self._change_waiters = 0

    # -- slots -------------------------------------------------------------------
    def reserve_free(self, stopping: Callable[[], bool], timeout: float | None = None) -> int:
        """Wait for free slots, reserve them all and return how many (0: stopped or timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if stopping():
                    return 0
                free = self.capacity - len(self._held) - self._reserved
                if free > 0:
                    self._reserved += free
                    return free
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return 0
                self._cond.wait(remaining)

    def unreserve(self, count: int) -> None:
        """Give back ``count`` reserved slots that found no step."""
        with self._cond:
            self._reserved -= count
            self._cond.notify_all()

    def add(self, held: HeldStep) -> None:
        """Turn one reserved slot into a held step."""
        with self._cond:
            self._reserved -= 1
            self._held.append(held)

    def hand_over(self, old: HeldStep, new: HeldStep) -> None:
        """Give ``old``'s slot to ``new`` (claimed along with ``old``'s report)."""
        with self._cond:
            self._held.remove(old)
            self._held.append(new)
            # A report was delivered: other steps may have become ready too.
            self._generation += 1
            if self._change_waiters:
                self._cond.notify_all()

    def admit(self, held: HeldStep) -> None:
        """Hold ``held`` without a free slot; the worker is over capacity until one frees."""
        with self._cond:
            self._held.append(held)

    def release(self, held: HeldStep) -> None:
        """Give back ``held``'s slot."""
        with self._cond:
            if held in self._held:
                self._held.remove(held)
                self._generation += 1
                self._cond.notify_all()

    # -- state -------------------------------------------------------------------
    def set_phase(self, held: HeldStep, phase: Phase) -> bool:
        """Move ``held`` to ``phase`` unless it was abandoned; return whether it moved."""
        with self._cond:
            if held.abandoned is not None:
                return False
            held.phase = phase
            return True

    def abandon(self, held: HeldStep, reason: str) -> bool:
        """Mark ``held`` abandoned and stop it if possible; return whether it was still live."""
        with self._cond:
            if held.abandoned is not None or held not in self._held:
                return False
            held.abandoned = reason
            cancel = held.cancel
        if cancel is not None:
            cancel()
        return True

    def find(self, token: str) -> HeldStep | None:
        """The live held step with lease ``token``."""
        with self._cond:
            return next((h for h in self._held if h.token == token and not h.abandoned), None)

    def live(self) -> list[HeldStep]:
        """Held steps the worker still answers for (not abandoned)."""
        with self._cond:
            return [h for h in self._held if h.abandoned is None]

    def all(self) -> list[HeldStep]:
        """Every held step, abandoned ones included."""
        with self._cond:
            return list(self._held)

    @property
    def generation(self) -> int:
        """Counts settled reports; a change means the broker may have new ready steps."""
        with self._cond:
            return self._generation

    def busy(self) -> bool:
        """Whether a slot is reserved or held by a step the worker still answers for.

        An abandoned sync step whose thread still runs keeps its slot (so at
        most ``capacity`` steps' code runs at once) but no longer keeps the
        worker busy: nothing will come of it.
        """
        with self._cond:
            return self._reserved > 0 or any(h.abandoned is None for h in self._held)

    def wait_for_change(self, generation: int, stopping: Callable[[], bool]) -> None:
        """Wait until a report is settled after ``generation`` (or stopping)."""
        with self._cond:
            self._change_waiters += 1
            try:
                while self._generation == generation and not stopping():
                    self._cond.wait()
            finally:
                self._change_waiters -= 1

    def wait_settled(self, until: float | None, stopping: Callable[[], bool]) -> bool:
        """Wait until no live step is held, ``until`` (monotonic) passes or stopping.

        Returns:
            Whether every live step was settled (run and reported, or dropped).
        """
        with self._cond:
            while self._live_count() and not stopping():
                remaining = None if until is None else until - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            return not self._live_count()

    def _live_count(self) -> int:
        return sum(1 for h in self._held if h.abandoned is None)

    def wake(self) -> None:
        """Wake every waiter so it re-checks its stop condition."""
        with self._cond:
            self._cond.notify_all()
