"""Heartbeats: keep the leases of held steps alive while they run.

A background thread calls ``keep_alive`` with the lease tokens the worker
still answers for, often enough that a lease never lapses while its step is
running or its report waits to be delivered. The reply names leases that
were lost (expired and handed to another worker, say) and runs that were
cancelled; the worker stops caring about those steps.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from fuseline.clients import BrokerClient
from fuseline.worker._held import HeldStep, HeldSteps
from fuseline.worker._transient import is_transient

__all__ = ["Heartbeat"]

log = logging.getLogger("fuseline.worker")

# Beat three times per lease: two beats may go missing before a lease lapses.
_BEATS_PER_LEASE = 3.0
_DEFAULT_INTERVAL = 5.0
_SHORTEST_INTERVAL = 0.05
_LONGEST_INTERVAL = 10.0


class Heartbeat:
    """A thread that extends the leases of the held steps.

    Args:
        client: The broker client.
        worker_id: Returns the worker's current id (it changes on re-registration).
        held: The held steps.
        on_gone: Called with a held step and a reason when the broker says the
            worker no longer holds its lease or its run was cancelled.
        interval: Seconds between beats; by default a third of the shortest
            lease held, between 0.05 and 10 seconds.
    """

    def __init__(
        self,
        client: BrokerClient,
        worker_id: Callable[[], str],
        held: HeldSteps,
        on_gone: Callable[[HeldStep, str], None],
        interval: float | None = None,
    ) -> None:
        self._client = client
        self._worker_id = worker_id
        self._held = held
        self._on_gone = on_gone
        self._fixed_interval = interval
        self._wake = threading.Event()
        # When (monotonic) the thread plans to beat next; guarded by _plan so
        # that a nudge sees either the plan made before its step was held or
        # one that already counts the step.
        self._plan = threading.Lock()
        self._due = math.inf
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable = False

    def start(self) -> None:
        """Start beating in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="fuseline-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread (briefly)."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def nudge(self, lease_seconds: float | None) -> bool:
        """A step with a lease of ``lease_seconds`` is now held: beat sooner if it needs that.

        The thread is woken only when the new lease needs a beat before the
        one planned, which for steps of equal leases is never: waking it for
        every step taken costs a thread switch per step.

        Returns:
            Whether the thread was woken to plan again.
        """
        if self._fixed_interval is not None or lease_seconds is None:
            return False
        with self._plan:
            if time.monotonic() + _interval_for(lease_seconds) >= self._due:
                return False
        self._wake.set()
        return True

    @property
    def next_beat(self) -> float | None:
        """When (``time.monotonic``) the next beat is planned; None before the first plan."""
        due = self._due
        return None if due == math.inf else due

    def interval(self) -> float:
        """Seconds until the next beat is due."""
        if self._fixed_interval is not None:
            return self._fixed_interval
        leases = [h.lease_seconds for h in self._held.live() if h.lease_seconds is not None]
        if not leases:
            return _DEFAULT_INTERVAL
        return _interval_for(min(leases))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopped.is_set():
            with self._plan:
                due = self._due = last + self.interval()
            remaining = due - time.monotonic()
            if remaining > 0:
                self._wake.wait(remaining)
                self._wake.clear()
                continue
            last = time.monotonic()
            self.beat()

    def beat(self) -> None:
        """Send one heartbeat for the live held steps and act on the reply."""
        live = [h for h in self._held.live() if h.token is not None]
        if not live:
            return
        tokens = [h.token for h in live if h.token is not None]
        sent_at = time.monotonic()
        try:
            reply = self._client.keep_alive(self._worker_id(), tokens)
        except Exception as exc:
            if is_transient(exc):
                if not self._unreachable:
                    log.warning("heartbeat failed, broker unreachable: %s; will keep trying", exc)
                self._unreachable = True
            else:
                log.warning("heartbeat rejected: %s: %s", type(exc).__name__, exc)
            return
        if self._unreachable:
            log.info("heartbeat delivered again; the broker is reachable")
            self._unreachable = False
        by_token = {h.token: h for h in live}
        for ref in reply.extended:
            extended = by_token.get(ref.lease_token)
            if extended is not None:
                extended.extended(sent_at)
        gone = ((reply.lost, "its lease was lost"), (reply.cancelled, "its run was cancelled"))
        for refs, reason in gone:
            for ref in refs:
                held = by_token.get(ref.lease_token)
                if held is not None:
                    self._on_gone(held, reason)


def _interval_for(lease_seconds: float) -> float:
    """Seconds between beats for a lease of ``lease_seconds``."""
    return min(max(lease_seconds / _BEATS_PER_LEASE, _SHORTEST_INTERVAL), _LONGEST_INTERVAL)
