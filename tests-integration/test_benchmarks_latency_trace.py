"""The latency tracer stamps calls in the client, the broker and the workers (no timing judged)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACER = ROOT / "benchmarks" / "latency_trace.py"
STAMP = re.compile(r"^\s*(\d+\.\d{3})\s+\+\s*(-?\d+\.\d{3})\s+([CBW]) (\S+)$")


@pytest.mark.slow
def test_a_traced_quick_run_lines_up_every_process_on_one_clock(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
    done = subprocess.run(
        [sys.executable, str(TRACER), "--config", "http-sqlite", "--quick", "--shown", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    header, *rows = done.stdout.strip().splitlines()
    assert re.match(r"--- \d+ of \d+ runs went this way", header), header
    stamps = [STAMP.match(row) for row in rows]
    assert all(stamps), rows
    labels = [(m[3], m[4]) for m in stamps if m]
    # One run, end to end: dispatched and answered in the client, handled by
    # the broker, run by a worker, in that order on the shared clock.
    assert labels[0] == ("C", "HttpBrokerClient.run_workflow>")
    assert labels[-1] == ("C", "HttpBrokerClient.run_workflow<")
    for expected in [
        ("B", "StorageBroker.dispatch_workflow>"),
        ("B", "SQLiteStorage.atomic<"),
        ("W", "StepJob.execute>"),
        ("B", "StorageBroker.report_step<"),
    ]:
        assert expected in labels, (expected, labels)
    assert labels.index(("B", "StorageBroker.dispatch_workflow>")) < labels.index(
        ("W", "StepJob.execute>")
    )
    times = [float(m[1]) for m in stamps if m]
    assert times == sorted(times)
