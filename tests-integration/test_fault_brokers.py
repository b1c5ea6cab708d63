"""A broker killed and restarted under load, and several brokers over one database.

Fault cases 2 and 7 of the reliability suite (docs/reliability.md).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import fault_flows as flows
import pytest
from fault_checker import assert_sound, check, expect_fan, read_ledger
from fault_harness import CLIENT_TOKEN, FaultCluster, fault_cluster, start_server, wait_until

from fuseline import RunDetails, Status
from fuseline.clients import HttpBrokerClient

BROKER_KILLS = 3
LONG_SECONDS = 4.0


def count_runs(client: HttpBrokerClient) -> int:
    total, cursor = 0, None
    while True:
        page = client.list_runs(limit=100, cursor=cursor)
        total += len(page.items)
        if page.next_cursor is None:
            return total
        cursor = page.next_cursor


@pytest.mark.chaos
def test_fault_2_a_killed_broker_loses_nothing(chaos_cluster: FaultCluster) -> None:
    """SIGKILL the broker several times during 100 runs; restart it on the same storage."""
    fc = chaos_cluster
    rng = random.Random(7)  # noqa: S311 - a repeatable chaos schedule
    names = fc.start_workers(3, "--concurrency", "4")
    first_pids = {w.pid for w in fc.live_workers()}

    # Steps that are running while the broker dies: their leases (20 s) must
    # survive the restarts, and their results count at the first attempt.
    long_keys = fc.dispatch(flows.long, 2, lambda i: {"seconds": LONG_SECONDS})
    wait_until(
        lambda: {e.key for e in read_ledger(fc.ledger) if e.step == "long"} == set(long_keys),
        30,
        "the long steps to start",
    )

    # Runs are dispatched while the broker dies and comes back; each run's
    # idempotency key makes a dispatch safe to send again.
    dispatcher = threading.Thread(
        target=fc.dispatch,
        args=(flows.fan_patient, 100, lambda i: {"size": 2 + i % 5}),
        kwargs={"timeout": 60},
    )
    dispatcher.start()
    try:
        for _ in range(BROKER_KILLS):
            time.sleep(rng.uniform(0.5, 1.5))  # the chaos schedule's pause between kills
            with fc.fault("broker SIGKILL and restart"):
                fc.cluster.server.kill()
                fc.cluster.start_server_again()
    finally:
        dispatcher.join(90)
    assert not dispatcher.is_alive()
    details = fc.wait_all(timeout=120)

    def expect(key: str, run: RunDetails) -> str | None:
        if key not in long_keys:
            return expect_fan(key, run)
        step = run.steps["long"]
        if run.status is not Status.SUCCEEDED or step.attempts != 1:
            return f"the long step ended {step.status.value} after {step.attempts} hand-outs"
        return None

    spanning = [
        e
        for e in read_ledger(fc.ledger)
        if e.ended is not None and e.started < fc.faults[0].began < e.ended
    ]
    figures = check(
        fc,
        details,
        "broker-kills",
        expect=expect,
        extra={"steps_spanning_a_kill": len(spanning)},
    )
    assert_sound(figures)
    assert len(details) == 102 and count_runs(fc.client) == 102, "a dispatch made two runs"
    assert figures.duplicates == 0, "an acknowledged report or lease was lost"
    assert {w.pid for w in fc.live_workers()} == first_pids, "workers died or were replaced"
    assert fc.restarts == 0
    assert set(long_keys) <= {e.key for e in spanning}
    assert [w.name for w in fc.workers] == names


@pytest.mark.chaos
@pytest.mark.postgres
def test_fault_7_several_brokers_over_one_database(
    postgres_url: str, tmp_path: Path, workers_find_fault_flows: None
) -> None:
    """Two broker servers (one with two processes) over one PostgreSQL, workers spread out."""
    with fault_cluster(tmp_path, postgres_url, "postgres") as fc:
        other = start_server(tmp_path, "--processes", "2", database_url=postgres_url)
        other_client = HttpBrokerClient(other.url, CLIENT_TOKEN)
        try:
            fc.start_workers(2, "--concurrency", "3")
            fc.start_workers(2, "--concurrency", "3", url=other.url)
            half = fc.dispatch(flows.fan, 50, lambda i: {"size": 2 + i % 5})
            fc.dispatch(flows.fan, 50, lambda i: {"size": 2 + i % 5}, client=other_client)
            details = fc.wait_all(timeout=120)
        finally:
            other_client.close()
            code = other.stop()
        figures = check(
            fc, details, "several-brokers", expect=expect_fan, extra={"brokers": 2, "processes": 3}
        )
        assert_sound(figures)
        assert code == 0, other.log()
        assert figures.duplicates == 0 and figures.executions == figures.steps_accepted
        # Work crossed over: runs dispatched through one broker ran on workers of the other.
        pids_by_url = {w.pid: fc.slot_urls[w.name.split(".")[0]] for w in fc.workers}
        ran_on = {pids_by_url[e.pid] for e in read_ledger(fc.ledger) if e.key in set(half)}
        assert ran_on == {fc.cluster.server.url, other.url}
