"""The benchmark runner works end to end in its quickest mode (no timing is judged)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "run.py"
QUICK_RUN = [sys.executable, str(RUNNER), "--quick", "--configs", "in-process"]
REPETITIONS = 3
WORKLOADS = {
    "W1 single x100": {"steps/s", "dispatch rate", "CPU/step process"},
    "W2 chain x30": {"steps/s", "runs/s", "dispatch rate", "CPU/step process"},
    "W3 diamond x20": {"steps/s", "runs/s", "dispatch rate", "CPU/step process"},
    "W2 chain x30, 4 workers": {"steps/s", "runs/s", "dispatch rate", "CPU/step process"},
    "L1 single x20": {"p50", "p95", "p99"},
    "L1 chain x20": {"p50", "p95", "p99"},
    "idle, 8 workers": {"process CPU"},
}


def table_rows(table: str) -> list[list[str]]:
    """The cells of a printed table, cut at the column widths its dashed rule shows."""
    lines = table.strip("\n").split("\n\n")[0].splitlines()
    spans, start = [], 0
    for dashes in lines[1].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines[2:] if line.strip()]


@pytest.mark.slow
def test_quick_in_process_run_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
    done = subprocess.run(
        [*QUICK_RUN, "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    written = list(tmp_path.glob("bench-*.json"))
    assert len(written) == 1, written
    document = json.loads(written[0].read_text())

    # stdout: the table, the targets, then the same JSON document.
    table, _, printed = done.stdout.partition("\n{\n")
    assert json.loads("{\n" + printed) == document
    header = table.splitlines()[0].split()
    assert header[:7] == ["configuration", "workload", "metric", "median", "min", "max", "unit"]
    shown = {tuple(row[:3]) for row in table_rows(table)}
    for workload, metrics in WORKLOADS.items():
        for metric in metrics:
            assert ("in-process", workload, metric) in shown, table

    expected_keys = {"machine", "settings", "postgresql", "pgbench", "results", "resources"}
    assert expected_keys | {"targets", "suite", "fuseline_version"} <= set(document)
    assert document["settings"]["quick"] is True
    assert document["settings"]["configurations"] == ["in-process"]
    assert document["settings"]["repetitions"] == REPETITIONS
    assert document["postgresql"] is None and document["pgbench"] == {}
    assert document["machine"]["cores"] >= 1

    results = document["results"]
    by_key = {(r["configuration"], r["workload"], r["metric"]): r for r in results}
    for workload, metrics in WORKLOADS.items():
        for metric in metrics:
            figure = by_key[("in-process", workload, metric)]
            assert len(figure["values"]) == REPETITIONS
            assert figure["min"] <= figure["median"] <= figure["max"]
            assert figure["unit"]
    # Workflow.run() is the reference row for the throughput workloads.
    assert ("Workflow.run()", "W2 chain x30", "steps/s") in by_key
    assert by_key[("in-process", "W1 single x100", "steps/s")]["median"] > 0

    peak = document["resources"]["in-process"]["broker_peak_rss_mib"]
    assert peak is not None and peak > 0
    judged = {t["target"]: t for t in document["targets"]}
    in_process = judged["in-process W2 >= 20,000 steps/s"]
    assert in_process["measured"] == by_key[("in-process", "W2 chain x30", "steps/s")]["median"]
    assert in_process["met"] in (True, False)
    # PostgreSQL targets were not measured in this run, so they are not judged.
    assert judged["W2 >= 0.5 x pgbench TPS (8 clients)"]["met"] is None


def descendants(pid: int) -> set[int]:
    """The processes below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_stops_the_broker_and_workers_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
    command = [sys.executable, str(RUNNER), "--quick", "--configs", "http-sqlite"]
    runner = subprocess.Popen(
        [*command, "--workloads", "W1", "--output-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    watchdog = threading.Timer(120, runner.kill)
    watchdog.start()
    try:
        assert runner.stderr is not None
        for line in runner.stderr:
            if "http-sqlite: W1" in line:  # broker and workers are up and working
                break
        started = descendants(runner.pid)
        assert len(started) >= 3, started  # the broker's processes and two workers

        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=60)

        assert runner.returncode == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if alive(pid)]
    finally:
        watchdog.cancel()
        if runner.poll() is None:
            runner.kill()
            runner.wait()
