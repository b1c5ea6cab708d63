"""Looking up one stored schema by id, and version or latest, on every backend.

Dispatching by workflow id (``POST /v1/runs`` with ``workflow_id``,
``client.run_workflow("id", ...)``) goes through this lookup, which reads
only that workflow's versions instead of every stored schema.
"""

from __future__ import annotations

import pytest
from broker_contract_support import Backend, schema

from fuseline.broker import StorageBroker
from fuseline.clients import LocalBrokerClient
from fuseline.errors import WorkflowNotFoundError


def test_the_latest_version_counts_digits_as_numbers(broker: StorageBroker) -> None:
    versions = ["1", "2", "10", "9"]
    broker.register_worker([schema("found", steps=["a"], version=v) for v in versions])
    broker.register_worker([schema("other", steps=["x"], version="99")])

    assert broker.find_workflow("found").version == "10"
    assert broker.find_workflow("found", "2") == schema("found", steps=["a"], version="2")
    assert LocalBrokerClient(broker).get_workflow("found").version == "10"


@pytest.mark.parametrize(("workflow_id", "version"), [("missing", None), ("found", "3")])
def test_an_unknown_workflow_or_version_is_not_found(
    broker: StorageBroker, workflow_id: str, version: str | None
) -> None:
    broker.register_worker([schema("found", steps=["a"], version="1")])
    with pytest.raises(WorkflowNotFoundError) as caught:
        broker.find_workflow(workflow_id, version)
    assert caught.value.details == {"workflow_id": workflow_id, "version": version}


def test_a_version_stored_through_another_broker_is_the_latest_at_once(
    durable_backend: Backend,
) -> None:
    first = durable_backend.open()
    first.register_worker([schema("shared", steps=["a"], version="1")])
    assert first.find_workflow("shared").version == "1"

    second = durable_backend.open()
    second.register_worker([schema("shared", steps=["a", "b"], version="2")])
    assert first.find_workflow("shared").version == "2"
    assert first.find_workflow("shared", "1").version == "1"
