"""PostgreSQL restarts, outages and killed connections under load.

Fault case 3 of the reliability suite (docs/reliability.md). The database is
a private cluster that this test starts, restarts and stops: the machine's
shared PostgreSQL server is never touched.
"""

from __future__ import annotations

import concurrent.futures
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fault_flows as flows
import httpx
import pytest
from fault_checker import assert_sound, check, expect_fan
from fault_harness import (
    CLIENT_TOKEN,
    WORKER_TOKEN,
    Fault,
    PrivatePostgres,
    fault_cluster,
    wait_until,
)

from fuseline import Status
from fuseline.clients import HttpBrokerClient

DATABASE = "fuseline_fault"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def ask(url: str, method: str, path: str, token: str, body: Any) -> tuple[int, Any, float]:
    """One raw request, no retries: the broker's answer and how long it took."""
    started = time.monotonic()
    response = httpx.request(
        method, url + path, headers={"Authorization": f"Bearer {token}"}, json=body, timeout=30
    )
    return response.status_code, response.json(), round(time.monotonic() - started, 2)


@pytest.mark.chaos
@pytest.mark.postgres
def test_fault_3_postgres_restarts_and_outages(
    private_postgres: PrivatePostgres, tmp_path: Path, workers_find_fault_flows: None
) -> None:
    pg = private_postgres
    url = pg.create_database(DATABASE)
    rng = random.Random(3)  # noqa: S311 - a repeatable chaos schedule
    with fault_cluster(tmp_path, url, "postgres") as fc:
        broker_pid = fc.cluster.server.pid
        # Few slots, so that the runs are still going when the outage comes.
        fc.start_workers(2, "--concurrency", "2")
        keys = fc.dispatch(flows.fan_patient, 100, lambda i: {"size": 2 + i % 5})
        run_id = fc.runs[keys[0]]

        under_load: dict[str, bool] = {}

        def inject(label: str, fault: Callable[[], object]) -> None:
            time.sleep(rng.uniform(0.3, 0.6))  # the chaos schedule's pause between faults
            under_load[label] = fc.open_runs()
            with fc.fault(label):
                fault()

        inject("terminate backends", lambda: pg.terminate_backends(DATABASE))
        inject("restart fast", lambda: pg.restart("fast"))
        inject("restart immediate", lambda: pg.restart("immediate"))

        # A real outage: while the database is down, answers are 503 JSON.
        time.sleep(rng.uniform(0.3, 0.6))
        under_load["stop"] = fc.open_runs()
        outage_began = time.time()
        pg.stop("fast")
        server = fc.cluster.server.url
        quick_schema = flows.quick.to_schema().model_dump(mode="json")
        requests = {
            "get run": ("GET", f"/v1/runs/{run_id}", CLIENT_TOKEN, None),
            "list runs": ("GET", "/v1/runs", CLIENT_TOKEN, None),
            "dispatch": ("POST", "/v1/runs", CLIENT_TOKEN, {"workflow_id": "fault-fan"}),
            "register": ("POST", "/v1/workers", WORKER_TOKEN, {"workflows": [quick_schema]}),
        }
        try:
            # Asked at the same time, so that the outage stays shorter than the leases.
            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                asked = {label: pool.submit(ask, server, *r) for label, r in requests.items()}
                outage = {label: future.result() for label, future in asked.items()}
            health = httpx.get(f"{server}/health", timeout=10).status_code
        finally:
            pg.start()
            fc.faults.append(Fault("stop", outage_began, time.time()))
        details = fc.wait_all(timeout=120)

        # The lease sweeper survived the outages: a step whose worker goes
        # quiet is still put back in the queue.
        for worker in fc.live_workers():
            assert worker.stop() == 0, worker.log()
        by_hand = HttpBrokerClient(fc.cluster.server.url, WORKER_TOKEN)
        try:
            worker_id = by_hand.register_worker([flows.quick.to_schema()], name="by-hand")
            (quick_key,) = fc.dispatch(flows.quick, 1)
            assignment = by_hand.get_step(worker_id, wait=10)
            assert assignment is not None and assignment.step_name == "quick"
            quick_run = fc.runs.pop(quick_key)
            wait_until(
                lambda: fc.client.get_run(quick_run).steps["quick"].status is Status.PENDING,
                15,
                "the sweeper to expire a lease after the outages",
            )
        finally:
            by_hand.close()

        figures = check(
            fc,
            details,
            "postgres-restarts",
            expect=expect_fan,
            extra={
                "faults_under_load": under_load,
                "outage_answers": {
                    label: [status, took] for label, (status, _, took) in outage.items()
                },
            },
        )
        assert_sound(figures)
        assert fc.cluster.server.pid == broker_pid and fc.cluster.server.process.poll() is None
        assert health == 200
        assert all(under_load.values()), f"the runs were over before the faults: {under_load}"
        for label, (status, answer, _) in outage.items():
            assert status == 503, (label, status, answer)
            assert answer["error"]["code"] == "unavailable", (label, answer)
        assert figures.duplicates == 0
        assert figures.succeeded == 100
