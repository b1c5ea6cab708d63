"""benchmarks/compare.py tells better and worse figures from noise, and refuses bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"


def figure(configuration: str, workload: str, metric: str, unit: str, *values: float) -> dict:
    ordered = sorted(values)
    return {
        "configuration": configuration,
        "workload": workload,
        "metric": metric,
        "unit": unit,
        "median": ordered[len(ordered) // 2],
        "min": ordered[0],
        "max": ordered[-1],
        "values": list(values),
    }


def document(figures: list[dict], pgbench_8: float | None = None) -> dict[str, Any]:
    pgbench = {}
    if pgbench_8 is not None:
        pgbench["clients_8"] = {"median": pgbench_8, "min": pgbench_8, "max": pgbench_8}
    return {
        "suite": "fuseline-bench",
        "started_at": "2026-12-03T07:00:00+00:00",
        "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11.7"},
        "pgbench": pgbench,
        "results": figures,
    }


def run(tmp_path: Path, base: dict, new: dict, *options: str) -> subprocess.CompletedProcess[str]:
    paths = []
    for name, content in (("base.json", base), ("new.json", new)):
        path = tmp_path / name
        path.write_text(json.dumps(content))
        paths.append(str(path))
    return subprocess.run(
        [sys.executable, str(COMPARE), *paths, *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verdicts(output: str) -> dict[tuple[str, str], str]:
    """(workload, metric) -> the verdict column (empty within the noise)."""
    found = {}
    for line in output.splitlines():
        cells = line.split("  ")
        cells = [c.strip() for c in cells if c.strip()]
        if cells and cells[0] in ("in-process", "http-postgresql", "postgresql"):
            last = cells[-1]
            found[(cells[1], cells[2])] = last if last in ("better", "worse") else ""
    return found


def test_only_changes_beyond_the_threshold_and_the_ranges_count(tmp_path: Path) -> None:
    share = {"fraction_of_pgbench_tps": {"clients_8": 0.125}}
    base = document(
        [
            figure("in-process", "W2 chain x300", "steps/s", "steps/s", 2000, 2050, 2100),
            figure("in-process", "L1 single x200", "p50", "ms", 1.0, 1.05, 1.1),
            figure("in-process", "W1 single x2000", "steps/s", "steps/s", 1900, 2000, 2100),
            figure("in-process", "W3 diamond x200", "steps/s", "steps/s", 2000, 2100, 2200),
            {**figure("http-postgresql", "W2 chain x300", "steps/s", "steps/s", 480, 500, 520)}
            | share,
        ],
        pgbench_8=4000,
    )
    new = document(
        [
            # +20 %, and the worst repetition beats the old best: better.
            figure("in-process", "W2 chain x300", "steps/s", "steps/s", 2400, 2460, 2520),
            # Latency up 30 % with the ranges apart: worse (lower is better).
            figure("in-process", "L1 single x200", "p50", "ms", 1.3, 1.35, 1.4),
            # +15 % but the ranges overlap: noise.
            figure("in-process", "W1 single x2000", "steps/s", "steps/s", 2050, 2300, 2400),
            {
                **figure("http-postgresql", "W2 chain x300", "steps/s", "steps/s", 590, 600, 610),
                "fraction_of_pgbench_tps": {"clients_8": 0.15},
            },
        ],
        pgbench_8=4000,
    )

    done = run(tmp_path, base, new)

    assert done.returncode == 0, done.stderr
    found = verdicts(done.stdout)
    assert found[("W2 chain x300", "steps/s")] == "better"
    assert found[("L1 single x200", "p50")] == "worse"
    assert found[("W1 single x2000", "steps/s")] == ""
    assert found[("pgbench -N -c 8", "tps")] == ""
    assert "0.125 -> 0.150" in done.stdout
    assert "1 figures only in base, of: in-process W3 diamond x200" in done.stdout
    assert "2 better, 1 worse, 2 within the noise" in done.stdout

    failing = run(tmp_path, base, new, "--fail-on-worse")
    assert failing.returncode == 1
    lenient = run(tmp_path, base, new, "--fail-on-worse", "--threshold", "0.5")
    assert lenient.returncode == 0
    assert "0 better, 0 worse" in lenient.stdout


def test_a_file_that_is_not_a_benchmark_document_is_refused(tmp_path: Path) -> None:
    done = run(tmp_path, {"results": []}, document([]))

    assert done.returncode == 2
    assert "base.json is not a document written by benchmarks/run.py" in done.stderr
    assert done.stdout == ""
