"""A claim whose answer fails after its COMMIT went out (PostgreSQL).

On PostgreSQL a claim carries the transaction's ``COMMIT``, and the claimed
steps' inputs (their predecessors' results) are read after it. When that
read fails, the caller answers with an error, so no worker ever holds those
leases: the broker must put the steps back at once, with their attempt
uncounted, instead of leaving them to a lease that runs out (30 s, and an
attempt lost, or the step failed when it had one attempt only).

The failure is real: the database server ends the connection just as the
read is sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from broker_contract_support import HandWorker, schema, wait_until

from fuseline.broker import PostgresBroker
from fuseline.errors import BrokerUnavailableError
from fuseline.status import Status
from fuseline.storage import StorageTransaction

pytestmark = pytest.mark.postgres

_RESULTS_READ = "SELECT step_name, result FROM fuseline_steps"


@contextlib.contextmanager
def _connection_lost_on_results_read(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> Iterator[list[int]]:
    """While open, the server ends a connection as it is asked for step results.

    Yields the list of backend pids that were ended.
    """
    ended: list[int] = []
    execute = psycopg.Cursor.execute

    def ending_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if str(query).startswith(_RESULTS_READ):
            pid = cursor.connection.info.backend_pid
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            ended.append(pid)
        return execute(cursor, query, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", ending_execute)
        yield ended


@pytest.fixture
def broker(postgres_url: str) -> Iterator[PostgresBroker]:
    opened = PostgresBroker(postgres_url, sweep_interval=0)
    try:
        yield opened
    finally:
        opened.close()


def _row(broker: PostgresBroker, run_id: str, step_name: str) -> Any:
    def read(t: StorageTransaction) -> Any:
        return next(row for row in t.steps_of(run_id) if row.step_name == step_name)

    return broker.storage.atomic(read, write=False)


@pytest.mark.parametrize("max_retries", [0, 2])
def test_steps_whose_claim_failed_after_commit_are_requeued_at_once(
    broker: PostgresBroker,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    max_retries: int,
) -> None:
    chain = schema(
        "claim-lost", [("a", "b")], settings={"b": {"retry": {"max_retries": max_retries}}}
    )
    worker = HandWorker(broker, [chain])
    run_id = broker.dispatch_workflow(chain, {})
    first = worker.claim()
    assert first is not None and first.step_name == "a"
    worker.succeed(first, {"made": "by a"})

    with (
        _connection_lost_on_results_read(monkeypatch, postgres_url) as ended,
        pytest.raises(BrokerUnavailableError),
    ):
        worker.claim()
    assert ended, "the claim did not read b's inputs after its commit"

    row = _row(broker, run_id, "b")
    assert (row.status, row.attempt, row.worker_id, row.lease_token) == (
        Status.PENDING,
        0,
        None,
        None,
    )
    again = worker.claim()
    assert again is not None and again.step_name == "b"
    assert again.attempt == 1
    assert again.payload["results"] == {"a": {"made": "by a"}}
    worker.succeed(again, "done")
    assert broker.get_run(run_id).status is Status.SUCCEEDED


def test_a_report_committed_with_its_claim_stands_when_the_claim_fails(
    broker: PostgresBroker, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = schema("report-then-lost-claim", [("a", "b")])
    single = schema("single-beside", steps=["only"])
    worker = HandWorker(broker, [chain, single])
    single_run = broker.dispatch_workflow(single, {})
    only = worker.claim()
    assert only is not None and only.step_name == "only"
    chain_run = broker.dispatch_workflow(chain, {})
    first = worker.claim()
    assert first is not None and first.step_name == "a"
    worker.succeed(first, {"made": "by a"})

    # A caller waits for the single run, less long than the broker's own
    # look at the tables (5 s): only the report's wake-up can end its wait.
    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(broker.await_run, single_run, 3.0)
        # (The only way to see a thread wait on a Condition is its waiter list.)
        wait_until(lambda: broker.storage.runs._condition._waiters, "the caller to wait")  # type: ignore[attr-defined]
        # The report finishes the single run; the claim that goes with it
        # takes the chain's b, whose inputs cannot be read.
        with (
            _connection_lost_on_results_read(monkeypatch, postgres_url),
            pytest.raises(BrokerUnavailableError),
        ):
            worker.report(only, Status.SUCCEEDED, "alone", claim_next=True)
        finished = waited.result()
        assert finished is not None and finished.status is Status.SUCCEEDED

    row = _row(broker, chain_run, "b")
    assert (row.status, row.attempt) == (Status.PENDING, 0)
    # The worker retries the report it got no answer for: it was accepted.
    assert worker.report(only, Status.SUCCEEDED, "alone", claim_next=True) is None
    again = worker.claim()
    assert again is not None and again.step_name == "b" and again.attempt == 1
