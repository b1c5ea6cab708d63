"""The worker distribution imports without the broker's stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fuseline
import fuseline.worker

_PROBE = """
import sys
import fuseline.worker
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"robyn", "psycopg", "psycopg_pool"}
    or name.startswith(("fuseline.broker", "fuseline.storage"))
)
print(",".join(loaded))
"""


def test_worker_is_a_typed_subpackage_of_fuseline() -> None:
    assert fuseline.worker.__file__ is not None
    package_dir = Path(fuseline.worker.__file__).parent
    assert package_dir.parent in map(Path, fuseline.__path__)
    assert (package_dir / "py.typed").is_file()


def test_importing_the_worker_loads_no_broker_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
