"""The Fuseline broker: workflow schemas, runs and step assignments.

Shipped by the ``fuseline-broker`` distribution. :class:`Broker` is the
interface (subclass it for a broker of your own); :class:`MemoryBroker`,
:class:`SQLiteBroker` and :class:`PostgresBroker` are the built-in brokers,
one implementation (:class:`StorageBroker`) over three storage backends.
``python -m fuseline.broker.http`` serves a broker over HTTP.
"""

from fuseline.broker._base import Broker
from fuseline.broker._builtin import MemoryBroker, PostgresBroker, SQLiteBroker
from fuseline.broker._storage_broker import StorageBroker
from fuseline.messages import StepAssignment, StepReport

__all__ = [
    "Broker",
    "MemoryBroker",
    "PostgresBroker",
    "SQLiteBroker",
    "StepAssignment",
    "StepReport",
    "StorageBroker",
]
