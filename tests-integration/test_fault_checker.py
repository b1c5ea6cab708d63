"""The fault suite's checker catches what it is meant to catch.

Fabricated ledgers and run details, no processes: each breach of a
guarantee must show up among the checker's problems, so that a fault test
passing means something.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fault_checker import Figures, check
from fault_harness import FaultCluster

from fuseline import RunDetails, Status
from fuseline.messages import StepRecord

LIVE, DEAD = 1001, 1002
FAN_STEPS = ("split", "part_0", "part_1", "part_2", "part_3", "gather")


class FakeCluster(FaultCluster):
    def crashed_pids(self) -> set[int]:
        return {DEAD}

    def worker_pids(self) -> dict[str, int]:
        return {"live-worker": LIVE, "dead-worker": DEAD}


def ledger_line(
    folder: Path, event: str, step: str, exec_id: str, pid: int, **parents: str
) -> None:
    line = {
        "event": event,
        "run": "k1",
        "step": step,
        "exec": exec_id,
        "pid": pid,
        "at": 1.0,
        "parents": parents,
    }
    with (folder / f"{pid}.jsonl").open("a") as ledger:
        ledger.write(json.dumps(line) + "\n")


def fan_run(
    tmp_path: Path, *, attempts: int = 1, status: Status = Status.SUCCEEDED
) -> tuple[FaultCluster, dict[str, RunDetails]]:
    """A fan run that ran cleanly on one live worker."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    now = datetime.now(UTC)
    steps = {}
    for name in FAN_STEPS:
        parents: dict[str, Any] = {}
        if name.startswith("part_"):
            parents = {"split": "e-split"}
        elif name == "gather":
            parents = {f"part_{i}": f"e-part_{i}" for i in range(4)}
        ledger_line(folder, "start", name, f"e-{name}", LIVE, **parents)
        ledger_line(folder, "end", name, f"e-{name}", LIVE)
        steps[name] = StepRecord(
            name=name,
            status=Status.SUCCEEDED,
            result={"exec": f"e-{name}", "value": 0, "pid": LIVE},
            attempts=attempts,
            worker_id="live-worker",
            finished_at=now,
        )
    run = RunDetails(
        run_id="r1",
        workflow_id="fault-fan",
        workflow_version="1",
        status=status,
        created_at=now,
        steps=steps,
    )
    cluster = SimpleNamespace(ledger=folder, workers=[], folder=tmp_path)
    return FakeCluster(cluster, "fake"), {"k1": run}  # type: ignore[arg-type]


def problems(fc: FaultCluster, details: dict[str, RunDetails]) -> Figures:
    return check(fc, details, "checker", write=False)


def test_a_clean_run_has_no_problem(tmp_path: Path) -> None:
    figures = problems(*fan_run(tmp_path))
    assert figures.problems == []
    assert figures.executions == figures.steps_accepted == 6 and figures.duplicates == 0


def test_a_second_execution_on_a_live_worker_is_caught(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path, attempts=2)
    ledger_line(
        fc.ledger,
        "start",
        "gather",
        "e-again",
        LIVE,
        **{f"part_{i}": f"e-part_{i}" for i in range(4)},
    )
    figures = problems(fc, details)
    assert any("never crashed" in p for p in figures.problems)
    assert figures.duplicates == 1


def test_a_second_execution_on_a_crashed_worker_is_allowed(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path, attempts=2)
    ledger_line(
        fc.ledger,
        "start",
        "gather",
        "e-again",
        DEAD,
        **{f"part_{i}": f"e-part_{i}" for i in range(4)},
    )
    figures = problems(fc, details)
    assert figures.problems == [] and figures.crash_executions == 1


def test_a_successor_that_saw_another_result_is_caught(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path)
    details["k1"].steps["split"].result = {"exec": "e-other", "value": 0, "pid": LIVE}
    ledger_line(fc.ledger, "start", "split", "e-other", LIVE)
    figures = problems(fc, details)
    assert sum("saw split result" in p for p in figures.problems) == 4


def test_an_accepted_result_nobody_computed_is_caught(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path)
    details["k1"].steps["gather"].result = {"exec": "e-forged"}
    assert any("no ledger shows" in p for p in problems(fc, details).problems)


def test_a_result_from_the_wrong_worker_is_caught(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path)
    details["k1"].steps["gather"].worker_id = "dead-worker"
    assert any("held the lease" in p for p in problems(fc, details).problems)


def test_too_many_attempts_are_caught(tmp_path: Path) -> None:
    fc, details = fan_run(tmp_path, attempts=99)
    assert any("over its limit" in p for p in problems(fc, details).problems)


@pytest.mark.parametrize("status", [Status.RUNNING, Status.PENDING])
def test_an_unfinished_run_counts_as_lost(tmp_path: Path, status: Status) -> None:
    figures = problems(*fan_run(tmp_path, status=status))
    assert figures.lost == 1 and figures.problems
