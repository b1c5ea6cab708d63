"""Stopping a worker with SIGTERM or SIGINT (Ctrl-C).

The first signal asks for a graceful stop: take no new work, finish what is
held, report, return. A second one stops at once. The Python-level handler
only counts signals (and raises on the second, to break out of a long poll);
the actual stopping happens in a watcher thread woken through
``signal.set_wakeup_fd``, because code that takes locks must not run inside a
signal handler that may have interrupted the holder of the same lock.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["ImmediateStop", "StopSignals"]

log = logging.getLogger("fuseline.worker")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ImmediateStop(BaseException):
    """A second stop signal arrived: stop now, without waiting for held steps.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped at once by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """Route SIGTERM and SIGINT to a worker while the ``with`` block runs.

    Does nothing outside the main thread, where Python cannot install handlers.

    Args:
        stop: Called as ``stop(immediately)`` from a helper thread.
        describe: Returns a sentence on what a graceful stop will wait for.
    """

    def __init__(self, stop: Callable[[bool], None], describe: Callable[[], str]) -> None:
        self._stop = stop
        self._describe = describe
        self._count = 0
        self._installed = False
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._installed = True
        self._watcher = threading.Thread(
            target=self._watch, args=(read_end,), name="fuseline-signals", daemon=True
        )
        self._watcher.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._installed or self._pipe is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        read_end, write_end = self._pipe
        os.close(write_end)  # ends the watcher's read
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        os.close(read_end)
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count >= 2:
            raise ImmediateStop(signum)

    def _watch(self, read_end: int) -> None:
        seen = 0
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in _SIGNALS:
                    continue  # another library's signal, woken through the same fd
                seen += 1
                name = signal.Signals(signum).name
                if seen == 1:
                    log.warning(
                        "received %s: taking no new work; %s (send it again to stop at once)",
                        name,
                        self._describe(),
                    )
                    self._stop(False)
                else:
                    log.warning("received %s again: stopping at once", name)
                    self._stop(True)
