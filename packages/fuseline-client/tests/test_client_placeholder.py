"""The client distribution imports alone, without the broker's stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fuseline
import fuseline.clients

# Imported in a fresh interpreter: this process may already hold modules that
# other tests imported.
_PROBE = """
import sys
import fuseline.clients
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"robyn", "psycopg", "psycopg_pool"}
    or name.startswith(("fuseline.broker", "fuseline.storage", "fuseline.worker"))
)
print(",".join(loaded))
"""


def test_clients_is_a_subpackage_of_fuseline() -> None:
    assert fuseline.clients.__name__ == "fuseline.clients"
    assert fuseline.clients.__file__ is not None
    assert Path(fuseline.clients.__file__).parent.parent in map(Path, fuseline.__path__)


def test_importing_the_client_loads_no_broker_or_database_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_client_package_is_typed() -> None:
    assert fuseline.clients.__file__ is not None
    assert (Path(fuseline.clients.__file__).parent / "py.typed").is_file()
