"""Fan-in under contention: three parents that report at the same moment, 500 times.

Fault case 6 of the reliability suite (docs/reliability.md).
"""

from __future__ import annotations

import fault_flows as flows
import pytest
from fault_checker import assert_sound, check
from fault_harness import FaultCluster

from fuseline import RunDetails, Status

RUNS = 500
TOGETHER = 0.05  # parents accepted within this many seconds of each other


def expect_join(key: str, run: RunDetails) -> str | None:
    if run.status is not Status.SUCCEEDED:
        return f"ended {run.status.value}"
    got = (run.result or {}).get("join", {}).get("value")
    return None if got == ["parent_0", "parent_1", "parent_2"] else f"join gave {got}"


@pytest.mark.chaos
def test_fault_6_a_join_of_three_simultaneous_parents_runs_once(
    chaos_cluster: FaultCluster,
) -> None:
    fc = chaos_cluster
    fc.start_workers(4, "--concurrency", "4")
    fc.dispatch(flows.trio, RUNS)
    details = fc.wait_all(timeout=240)

    spreads = []
    for run in details.values():
        finished = [run.steps[f"parent_{i}"].finished_at for i in range(3)]
        if all(finished):
            stamps = [moment.timestamp() for moment in finished if moment is not None]
            spreads.append(max(stamps) - min(stamps))
    together = sum(spread < TOGETHER for spread in spreads)
    figures = check(
        fc,
        details,
        "fan-in",
        expect=expect_join,
        extra={"joins_whose_parents_finished_within_50ms": together},
    )
    assert_sound(figures)
    assert figures.succeeded == RUNS
    # No kills here, so every step ran exactly once: the join too.
    assert figures.duplicates == 0 and figures.executions == figures.steps_accepted == RUNS * 5
    assert together > 0, "the parents never finished together; the race was not exercised"
