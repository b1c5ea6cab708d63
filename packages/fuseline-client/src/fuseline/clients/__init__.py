"""Clients that talk to a Fuseline broker, in-process or over HTTP.

Shipped by the ``fuseline-client`` distribution, which needs only
``fuseline-core`` and httpx: an application that installs it alone can
dispatch runs to a broker server and read their results.

- :class:`BrokerClient`: the interface workers and applications use.
- :class:`LocalBrokerClient`: calls a broker object in this process.
- :class:`HttpBrokerClient`: calls a broker server over HTTP.
- :class:`AsyncHttpBrokerClient`: the same over HTTP, with coroutines.

Every client raises the exceptions of :mod:`fuseline.errors`, whichever side
of the network the problem was found on; :mod:`fuseline.clients.wire` holds
the JSON bodies of the HTTP API.
"""

from fuseline.clients._async_http import AsyncHttpBrokerClient
from fuseline.clients._base import BrokerClient, SupportsSchema, WorkflowRef
from fuseline.clients._http import HttpBrokerClient
from fuseline.clients._local import LocalBrokerClient, SeedBroker
from fuseline.clients._retry import Backoff

__all__ = [
    "AsyncHttpBrokerClient",
    "Backoff",
    "BrokerClient",
    "HttpBrokerClient",
    "LocalBrokerClient",
    "SeedBroker",
    "SupportsSchema",
    "WorkflowRef",
]
