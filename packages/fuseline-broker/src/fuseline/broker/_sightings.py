"""What this broker process saw in the storage, trusted until a hint says otherwise.

Some answers only change through a commit that fires one of the storage's
signals: a worker's claim that found nothing stays empty until a commit
leaves a step ready, a run that was unfinished stays so until a commit ends
it. A sighting remembers such an answer with the signal's generation read
before the look, so that a caller asking again can be answered without a
transaction while no hint came since.

A sighting is trusted for one poll interval only, exactly as long as a
waiting caller trusts the signals before it looks at the storage again: a
change made where no hint reaches this process (another broker process's
notification lost with the listener's connection) is noticed no later than
it was without sightings.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

__all__ = ["Sightings"]


class _Sighting(NamedTuple):
    generation: int
    valid_until: float


class Sightings:
    """Answers seen in the storage, by key, each with the signal generation it holds for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, _Sighting] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def saw(self, key: str, generation: int, valid_until: float) -> None:
        """Note an answer for ``key`` read after the signal was at ``generation``."""
        with self._lock:
            # Moved to the end, so that the oldest sightings come first.
            self._seen.pop(key, None)
            self._seen[key] = _Sighting(generation, valid_until)

    def still_holds(self, key: str, generation: int, now: float) -> float | None:
        """Until when the answer for ``key`` holds, or None when it must be read again."""
        seen = self._seen.get(key)
        if seen is None or seen.generation != generation or now >= seen.valid_until:
            return None
        return seen.valid_until

    def forget(self, key: str) -> None:
        """Drop the answer for ``key``: the next caller reads the storage."""
        with self._lock:
            self._seen.pop(key, None)

    def forget_older(self, now: float) -> None:
        """Drop the answers no longer trusted (most are never asked for again)."""
        with self._lock:
            while self._seen:
                key, seen = next(iter(self._seen.items()))
                if now < seen.valid_until:
                    return
                del self._seen[key]
