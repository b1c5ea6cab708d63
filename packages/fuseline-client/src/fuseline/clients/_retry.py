"""When and how long the HTTP clients wait before trying a request again."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

__all__ = ["Backoff", "reached_server", "retry_after_seconds"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter.

    Attributes:
        retries: How many times a request is tried again (0: never).
        initial: Upper bound of the first pause, in seconds.
        maximum: Upper bound of any pause.
    """

    retries: int = 3
    initial: float = 0.2
    maximum: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to pause before retry number ``attempt`` (counting from 0)."""
        ceiling = min(self.maximum, self.initial * (2**attempt))
        # Jitter spreads out clients that all lost the broker at once; it has
        # nothing to do with security.
        pause = random.uniform(0, ceiling)  # noqa: S311
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.maximum))
        return pause


def reached_server(exc: httpx.TransportError) -> bool:
    """Whether the request may have reached the server before ``exc`` happened.

    Failing to open a connection (refused, unresolvable, timed out while
    connecting, no free pooled connection) means nothing was sent, so any
    request may be tried again.
    """
    return not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; dates are ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
