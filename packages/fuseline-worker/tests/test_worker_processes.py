"""Real worker processes against a real broker server over HTTP, on SQLite and PostgreSQL.

Executions are counted from inside the steps (see ``worker_flows.py``), so a
step run twice is caught even when the broker kept only one result.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
import worker_flows as flows
from worker_processes import Cluster

from fuseline import Status, Workflow

RUN_TIMEOUT = 60.0


def dispatch(cluster: Cluster, workflow: Workflow, **inputs: Any) -> tuple[str, str]:
    """Start a run with a fresh ``key``; return (key, run id)."""
    key = uuid.uuid4().hex[:12]
    run_id = cluster.client.dispatch_workflow(workflow.to_schema(), {"key": key, **inputs})
    return key, run_id


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_share_runs_and_run_every_step_exactly_once(cluster: Cluster, workers: int) -> None:
    names = [f"w{i}" for i in range(workers)]
    for name in names:
        cluster.start_worker(name, "--concurrency", "2")
    cluster.wait_registered(*names)

    expected: Counter[tuple[str, str]] = Counter()
    checks: list[tuple[str, Any]] = []
    for x in range(4):
        key, run_id = dispatch(cluster, flows.chain, x=x)
        expected.update((key, s) for s in ("Start", "Add", "Square"))
        checks.append((run_id, lambda r, x=x: r.result["Square"]["value"] == (x + 1) ** 2))
    for size in range(2, 8):
        key, run_id = dispatch(cluster, flows.fan, size=size)
        expected.update((key, s) for s in ("Split", "part_0", "part_1", "part_2", "part_3"))
        expected[(key, "Gather")] += 1
        total = sum(range(size)) * (1 + 2 + 3 + 4)
        checks.append((run_id, lambda r, total=total: r.result == {"Gather": total}))
    for amount in (5, 500, 50, 150):
        key, run_id = dispatch(cluster, flows.branching, amount=amount)
        branch = "Big" if amount >= 100 else "Small"
        expected.update([(key, "Decide"), (key, branch), (key, "Report")])
        if branch == "Big":
            expected[(key, "Big")] += 1  # the retry policy runs it twice, on one worker
        text = f"report: {branch.lower()} {amount}"
        checks.append((run_id, lambda r, text=text: r.result == {"Report": text}))
    for n in range(3):
        key, run_id = dispatch(cluster, flows.asynchronous, n=n)
        expected.update([(key, "Fetch"), (key, "Combine")])
        checks.append((run_id, lambda r, n=n: r.result == {"Combine": n * 10 + 1}))

    for run_id, check in checks:
        run = cluster.finished(run_id)
        assert run.status is Status.SUCCEEDED, run
        assert check(run), run.result

    lines = flows.executions(cluster.ledger)
    assert Counter((key, step) for key, step, _ in lines) == expected
    big_runs = {key for key, step, _ in lines if step == "Big"}
    for key in big_runs:  # both attempts of a retried step happen in one process
        assert len({pid for k, step, pid in lines if k == key and step == "Big"}) == 1
    assert len({pid for _, _, pid in lines}) >= 2, "the runs were not shared"


def test_branching_skips_the_other_branch_and_timeouts_fail(cluster: Cluster) -> None:
    cluster.start_worker("solo", "--concurrency", "2")
    small_key, small = dispatch(cluster, flows.branching, amount=1)
    _, hang = dispatch(cluster, flows.timeout)
    run = cluster.finished(small)
    assert run.steps["Big"].status is Status.SKIPPED
    assert run.steps["Small"].status is Status.SUCCEEDED
    failed = cluster.finished(hang)
    assert failed.status is Status.FAILED
    error = failed.steps["Hang"].error
    assert error is not None and error.type == "StepTimeoutError"
    assert error.traceback and "StepTimeoutError" in error.traceback
    log = cluster.workers[0].log()
    assert "registered as worker" in log
    assert "step 'Hang'" in log and "FAILED in" in log and "SUCCEEDED in" in log
    ran = [step for key, step, _ in flows.executions(cluster.ledger) if key == small_key]
    assert ran == ["Decide", "Small", "Report"]
