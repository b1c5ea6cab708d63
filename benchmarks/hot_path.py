"""Count what each step costs: database transactions, SQL statements and HTTP requests.

::

    python benchmarks/hot_path.py [--postgres-url URL]

Part one calls a ``PostgresBroker`` directly, one operation at a time, and
counts the transactions, statements and round trips each one sends
(psycopg's ``Cursor.execute``, ``Connection.transaction`` and ``pipeline`` are
wrapped for the count; BEGIN and COMMIT count as the transaction, not as
statements; a statement sent alone is a round trip, and so is a pipeline).
Part two runs workers (``ProcessEngine`` threads talking HTTP) against the
broker server over PostgreSQL and counts the requests of each kind per step.
Counts do not depend on the machine, unlike timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from bench_workflows import ALL, CHAIN, DIAMOND, SINGLE
from options import DEFAULT_POSTGRES
from postgres import database
from setups import HttpSetup

from fuseline import Status, StepReport
from fuseline.broker import PostgresBroker
from fuseline.clients import HttpBrokerClient
from fuseline.messages import StepAssignment
from fuseline.worker import ProcessEngine

__all__ = ["count_http_requests", "count_statements", "main"]


class _Tally:
    """Statements, transactions and round trips seen since the last reset.

    ``BEGIN`` and ``COMMIT`` count as a transaction, not as statements. A
    statement sent on its own is a round trip, and so is a whole pipeline.
    """

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.transactions = 0
        self.round_trips = 0
        self.in_pipeline = False

    def reset(self) -> None:
        self.statements, self.transactions, self.round_trips = [], 0, 0


@contextlib.contextmanager
def _counting(tally: _Tally) -> Iterator[None]:
    execute, transaction = psycopg.Cursor.execute, psycopg.Connection.transaction
    pipeline = psycopg.Connection.pipeline

    def counted_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = " ".join(str(query).split())
        if text == "BEGIN":
            tally.transactions += 1
        elif text != "COMMIT":
            tally.statements.append(text[:72])
        tally.round_trips += not tally.in_pipeline
        return execute(self, query, *args, **kwargs)

    def counted_transaction(self: Any, *args: Any, **kwargs: Any) -> Any:
        tally.transactions += 1
        tally.round_trips += 2  # psycopg's own BEGIN and COMMIT
        return transaction(self, *args, **kwargs)

    @contextlib.contextmanager
    def counted_pipeline(self: Any) -> Iterator[Any]:
        tally.round_trips += 1
        tally.in_pipeline = True
        try:
            with pipeline(self) as held:
                yield held
        finally:
            tally.in_pipeline = False

    psycopg.Cursor.execute = counted_execute  # type: ignore[assignment, method-assign]
    psycopg.Connection.transaction = counted_transaction  # type: ignore[method-assign]
    psycopg.Connection.pipeline = counted_pipeline  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        psycopg.Connection.transaction = transaction  # type: ignore[method-assign]
        psycopg.Connection.pipeline = pipeline  # type: ignore[method-assign]


def _outcome(a: StepAssignment, result: Any) -> StepReport:
    return StepReport(
        workflow_id=a.workflow_id,
        instance_id=a.instance_id,
        step_name=a.step_name,
        state=Status.SUCCEEDED,
        result=result,
        lease_token=a.lease_token,
    )


def _report(
    broker: PostgresBroker, worker_id: str, a: StepAssignment, result: Any, claim_next: bool
) -> StepAssignment | None:
    return broker.report_step(worker_id, _outcome(a, result), claim_next=claim_next)


def count_statements(url: str) -> list[dict[str, Any]]:
    """Transactions and statements of each broker operation (3-step chain, single step)."""
    broker = PostgresBroker(url, sweep_interval=0)
    tally = _Tally()
    found: list[dict[str, Any]] = []

    def measure(operation: str, call: Callable[[], Any]) -> Any:
        tally.reset()
        value = call()
        found.append(
            {
                "operation": operation,
                "transactions": tally.transactions,
                "statements": len(tally.statements),
                "round_trips": tally.round_trips,
                "sql": list(tally.statements),
            }
        )
        return value

    try:
        worker = broker.register_worker([w.to_schema() for w in ALL], name="hot-path")
        for workflow in ALL:  # stores the schemas; later dispatches find them cached
            broker.dispatch_workflow(workflow.to_schema(), {"n": 0})
        while (left := broker.get_step(worker)) is not None:
            _report(broker, worker, left, {"n": 0, "hops": 1, "weight": 1}, False)
        schema = CHAIN.to_schema()
        with _counting(tally):
            run_id = measure(
                "dispatch (with an idempotency key, as HttpBrokerClient sends)",
                lambda: broker.dispatch_workflow(schema, {"n": 1}, idempotency_key="hot-path-1"),
            )
            a = measure("claim one step (get_steps)", lambda: broker.get_step(worker))
            b = measure(
                "report + claim_next: the successor is enqueued and claimed",
                lambda: _report(broker, worker, a, {"n": 1, "hops": 1}, True),
            )
            c = measure(
                "report + claim_next: the same again",
                lambda: _report(broker, worker, b, {"n": 1, "hops": 2}, True),
            )
            measure(
                "report + claim_next: the last step, the run ends, nothing to claim",
                lambda: _report(broker, worker, c, {"n": 1, "hops": 3}, True),
            )
            single = SINGLE.to_schema()
            broker.dispatch_workflow(single, {"n": 2})
            broker.dispatch_workflow(single, {"n": 3})
            first = broker.get_step(worker)
            measure(
                "report + claim_next: a single-step run ends, another run's step is claimed",
                lambda: _report(broker, worker, first, {"n": 2}, True),
            )
            for n in range(4, 8):
                broker.dispatch_workflow(schema, {"n": n})
            firsts = broker.get_steps(worker, max_steps=4)
            measure(
                "report_steps: 4 reports of 4 runs' first steps, claiming the 4 successors",
                lambda: broker.report_steps(
                    worker, [_outcome(f, {"n": 0, "hops": 1}) for f in firsts], claim=4
                ),
            )
            measure("get_run", lambda: broker.get_run(run_id))
            measure("wait_for_run on a finished run", lambda: broker.wait_for_run(run_id, 1))
            measure("heartbeat (keep_alive) holding 5 leases", lambda: broker.keep_alive(worker))
            # A worker waiting in a long poll gets the step from the dispatch itself.
            _handed(
                broker,
                worker,
                lambda: measure(
                    "dispatch while a worker waits (the first step is leased to it)",
                    lambda: broker.dispatch_workflow(
                        schema, {"n": 9}, idempotency_key="hot-path-2"
                    ),
                ),
            )
            # The same for a single-step run. Its poll had found nothing, and
            # no work was queued since: the claim that the report would make
            # could find nothing, and is left out.
            handed = _handed(broker, worker, lambda: broker.dispatch_workflow(single, {"n": 10}))
            measure(
                "report + claim_next of a single step handed to a waiting poll, no work since",
                lambda: _report(broker, worker, handed, {"n": 10}, True),
            )
    finally:
        broker.close()
    return found


def _handed(broker: PostgresBroker, worker: str, dispatch: Callable[[], Any]) -> StepAssignment:
    """Let ``worker`` wait in a long poll, call ``dispatch``; the step the poll was handed."""
    handed: list[StepAssignment | None] = []
    poll = threading.Thread(target=lambda: handed.append(broker.get_step(worker, wait=10)))
    poll.start()
    _await(lambda: len(broker._waiters) == 1, "the long poll to wait")
    dispatch()
    poll.join(10)
    if not handed or handed[0] is None:
        raise RuntimeError("the waiting worker was not handed the dispatched step")
    return handed[0]


def _await(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


class _CountingClient(HttpBrokerClient):
    """An HTTP client that counts its calls by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1

    def get_steps(self, *args: Any, **kwargs: Any) -> list[StepAssignment]:
        self._count("claim (long poll)")
        return super().get_steps(*args, **kwargs)

    def report_step(self, *args: Any, **kwargs: Any) -> StepAssignment | None:
        self._count("report (+ claim_next)")
        return super().report_step(*args, **kwargs)

    def report_steps(self, *args: Any, **kwargs: Any) -> Any:
        self._count("report batch (+ claims)")
        reply = super().report_steps(*args, **kwargs)
        with self._lock:
            self.calls["reports sent in batches"] += len(reply.outcomes)
        return reply

    def keep_alive(self, *args: Any, **kwargs: Any) -> Any:
        self._count("heartbeat")
        return super().keep_alive(*args, **kwargs)


def count_http_requests(server_url: str, runs: int = 100) -> list[dict[str, Any]]:
    """HTTP requests per step of two workers working through a queue of runs.

    The counts include the last, empty claims of each worker.
    """
    found = []
    with (
        tempfile.TemporaryDirectory(prefix="fuseline-hot-path-") as scratch,
        database(server_url, "hotpath") as url,
        HttpSetup("postgresql", url, Path(scratch), concurrency=4) as setup,
    ):
        assert isinstance(setup.client, HttpBrokerClient)  # noqa: S101 - HttpSetup makes one
        token = setup._worker_env["FUSELINE_WORKER_TOKEN"]
        for workflow in (SINGLE, CHAIN, DIAMOND):
            # Every run is queued before the workers start: the busy regime,
            # where reports (single or batched) bring the next steps.
            schema = workflow.to_schema()
            run_ids = [setup.client.dispatch_workflow(schema, {"n": n}) for n in range(runs)]
            clients = [_CountingClient(setup.url, token) for _ in range(2)]
            engines = [ProcessEngine(c, ALL, concurrency=4, poll_wait=5.0) for c in clients]
            threads = [
                threading.Thread(target=e.serve, kwargs={"handle_signals": False}, daemon=True)
                for e in engines
            ]
            for thread in threads:
                thread.start()
            for run_id in run_ids:
                setup.client.wait_for_run(run_id, timeout=120)
            for engine in engines:
                engine.stop()
            for thread in threads:
                thread.join(timeout=30)
            steps = runs * len(schema.steps)
            total: Counter[str] = Counter()
            for client in clients:
                total.update(client.calls)
                client.close()
            found.append(
                {
                    "workflow": schema.workflow_id,
                    "runs": runs,
                    "steps": steps,
                    "dispatch per step": runs / steps,
                    **{f"{kind} per step": count / steps for kind, count in sorted(total.items())},
                }
            )
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the counts."""
    parser = argparse.ArgumentParser(prog="benchmarks/hot_path.py", description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("FUSELINE_BENCH_DATABASE_URL")
        or os.environ.get("FUSELINE_TEST_DATABASE_URL")
        or DEFAULT_POSTGRES,
    )
    args = parser.parse_args(argv)
    with database(args.postgres_url, "hotpath") as url:
        operations = count_statements(url)
    print("Broker operations (PostgresBroker, called directly):")
    for op in operations:
        print(
            f"\n  {op['operation']}: {op['transactions']} tx, {op['statements']} statements, "
            f"{op['round_trips']} round trips"
        )
        for statement in op["sql"]:
            print(f"      {statement}")
    print("\nHTTP requests per step, 2 workers (concurrency 4) working off 100 queued runs:")
    for row in count_http_requests(args.postgres_url):
        figures = ", ".join(
            f"{k} {v:.2f}" for k, v in row.items() if k not in ("workflow", "runs", "steps")
        )
        print(f"  {row['workflow']}: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
