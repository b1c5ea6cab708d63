"""Every program in examples/ runs and does what its README says."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_start_demo_runs_to_its_designed_outcome() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT / "examples",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Every order is listed; mallory's fraud check times out, the rest ship.
    for order in ("101", "102", "103", "104", "105", "106"):
        assert order in out
    mallory = next(line for line in out.splitlines() if "mallory" in line)
    assert "FAILED" in mallory
    assert out.count("SUCCEEDED") == 5
    assert "express" in out and "standard" in out
    assert "Steps run per worker:" in out
    assert "Stopped the workers and the broker." in out
