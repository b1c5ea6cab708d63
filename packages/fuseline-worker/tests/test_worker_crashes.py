"""Workers that die, freeze, are told to stop, or lose the broker, with real signals.

The ``long`` workflow's step has a 3-second lease (its timeout), which
heartbeats extend while it runs, and three retries for the broker to hand it
out again after a lease expires.
"""

from __future__ import annotations

import os
import signal
import uuid

import worker_flows as flows
from worker_processes import (
    WORKER_TOKEN,
    Cluster,
    WorkerProcess,
    wait_until,
)

from fuseline import Status


def start_long(cluster: Cluster, seconds: float, workflow: str = "long") -> tuple[str, str]:
    key = uuid.uuid4().hex[:12]
    schema = getattr(flows, workflow).to_schema()
    return key, cluster.client.dispatch_workflow(schema, {"key": key, "seconds": seconds})


def wait_started(cluster: Cluster, key: str, worker: WorkerProcess) -> None:
    def started() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"{worker.name} exited:\n{worker.log()}")
        return (key, "Long", worker.pid) in flows.executions(cluster.ledger)

    wait_until(started, 30, f"{worker.name} to start the step")


def first_worker_takes_a_step(cluster: Cluster, seconds: float) -> tuple[WorkerProcess, str, str]:
    """Start a worker, dispatch one ``long`` run and wait until that worker runs its step."""
    first = cluster.start_worker("first")
    cluster.wait_registered("first")
    key, run_id = start_long(cluster, seconds)
    wait_started(cluster, key, first)
    return first, key, run_id


def runs_of(cluster: Cluster, key: str) -> list[int]:
    """The pids of the workers that started the ``Long`` step of run ``key``."""
    return [pid for k, step, pid in flows.executions(cluster.ledger) if k == key]


def test_a_killed_worker_s_step_finishes_on_another_worker(cluster: Cluster) -> None:
    first, key, run_id = first_worker_takes_a_step(cluster, seconds=2.0)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    second = cluster.start_worker("second")

    run = cluster.finished(run_id)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"Long": {"pid": second.pid}}
    assert run.steps["Long"].attempts == 2
    assert runs_of(cluster, key) == [first.pid, second.pid]


def test_a_frozen_worker_s_late_report_is_rejected(cluster: Cluster) -> None:
    first, key, run_id = first_worker_takes_a_step(cluster, seconds=1.5)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = cluster.start_worker("second")
        run = cluster.finished(run_id)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert run.result == {"Long": {"pid": second.pid}}

    def gave_up() -> bool:
        log = first.log()
        return "rejected the report" in log or "its lease was lost" in log

    wait_until(gave_up, 30, "the first worker to learn it lost the step")
    after = cluster.client.get_run(run_id)
    assert after.status is Status.SUCCEEDED
    assert after.result == {"Long": {"pid": second.pid}}
    assert sorted(runs_of(cluster, key)) == sorted([first.pid, second.pid])
    names = {w.worker_id: w.name for w in cluster.client.list_workers()}
    assert names[after.steps["Long"].worker_id or ""] == "second"


def test_sigterm_lets_the_held_step_finish_once_and_exits_cleanly(cluster: Cluster) -> None:
    first, key, run_id = first_worker_takes_a_step(cluster, seconds=2.0)
    second = cluster.start_worker("second")
    cluster.wait_registered("second")
    first.send(signal.SIGTERM)
    assert first.wait() == 0, first.log()
    run = cluster.finished(run_id)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"Long": {"pid": first.pid}}
    assert runs_of(cluster, key) == [first.pid]
    assert "received SIGTERM" in first.log()
    assert not [line for line in flows.executions(cluster.ledger) if line[2] == second.pid]


def test_a_second_signal_stops_at_once_and_the_step_runs_elsewhere(cluster: Cluster) -> None:
    first, key, run_id = first_worker_takes_a_step(cluster, seconds=2.0)
    first.send(signal.SIGINT)
    wait_until(lambda: "received SIGINT" in first.log(), 10, "the first signal to be seen")
    first.send(signal.SIGINT)
    assert first.wait() == 128 + signal.SIGINT
    second = cluster.start_worker("second")
    run = cluster.finished(run_id)
    assert run.result == {"Long": {"pid": second.pid}}
    assert runs_of(cluster, key) == [first.pid, second.pid]


def test_a_worker_keeps_its_result_while_the_broker_restarts(cluster: Cluster) -> None:
    worker = cluster.start_worker("patient", "--grace-period", "60")
    cluster.wait_registered("patient")
    key, run_id = start_long(cluster, seconds=2.0, workflow="steady")
    wait_started(cluster, key, worker)
    assert cluster.server.stop() == 0
    wait_until(lambda: "broker unreachable" in worker.log(), 30, "the worker to miss the broker")
    # Same port, same state (the SQLite file in tmp_path, or the same database).
    cluster.start_server_again()
    run = cluster.finished(run_id)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"Long": {"pid": worker.pid}}
    assert runs_of(cluster, key) == [worker.pid]


def test_a_refused_token_is_reported_clearly(cluster: Cluster) -> None:
    wrong = "not-the-worker-token-" + uuid.uuid4().hex
    worker = cluster.start_worker("intruder", token=wrong)
    assert worker.wait() == 5
    assert "rejected the worker's token" in worker.log()
    assert "FUSELINE_WORKER_TOKEN" in worker.log()
    assert WORKER_TOKEN not in worker.log()
