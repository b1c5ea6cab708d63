"""Fuseline workers: run the steps that a broker hands out.

Shipped by the ``fuseline-worker`` distribution, which depends on
``fuseline-core`` and ``fuseline-client`` but never on the broker.

``ProcessEngine`` is the worker; ``python -m fuseline.worker`` (or
``fuseline worker``) runs one from the command line.
"""

from fuseline.worker._engine import ProcessEngine
from fuseline.worker._signals import ImmediateStop

__all__ = ["ImmediateStop", "ProcessEngine"]
