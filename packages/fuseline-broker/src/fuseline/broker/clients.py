"""The broker clients, importable from the broker package as the seeds show.

``from fuseline.broker.clients import LocalBrokerClient, HttpBrokerClient``
is the same as importing them from :mod:`fuseline.clients`, which the
``fuseline-client`` distribution ships.
"""

from fuseline.clients import (
    AsyncHttpBrokerClient,
    Backoff,
    BrokerClient,
    HttpBrokerClient,
    LocalBrokerClient,
    SeedBroker,
    SupportsSchema,
    WorkflowRef,
)

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
