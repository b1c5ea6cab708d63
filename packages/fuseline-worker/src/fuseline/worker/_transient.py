"""Telling a broker that is away for a moment from a broker that says no."""

from __future__ import annotations

from fuseline.errors import FuselineError

__all__ = ["is_transient"]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the broker cannot be reached right now".

    ``BrokerUnavailableError`` is a ``ConnectionError``; socket errors and
    timeouts that a client let through unwrapped count too. Fuseline's own
    timeouts (a step's or a wait's) are answers, not outages.
    """
    if isinstance(exc, FuselineError):
        return isinstance(exc, ConnectionError)
    return isinstance(exc, (ConnectionError, TimeoutError))
