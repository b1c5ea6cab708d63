"""The broker distribution provides fuseline.broker and fuseline.storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fuseline
import fuseline.broker
import fuseline.storage


@pytest.mark.parametrize("module", [fuseline.broker, fuseline.storage])
def test_module_is_a_typed_subpackage_of_fuseline(module: object) -> None:
    file = getattr(module, "__file__", None)
    assert file is not None
    package_dir = Path(file).parent
    assert package_dir.parent in map(Path, fuseline.__path__)
    assert (package_dir / "py.typed").is_file()


def test_importing_the_broker_does_not_load_the_worker() -> None:
    probe = (
        "import sys, fuseline.broker, fuseline.storage; "
        "print(any(n.startswith('fuseline.worker') for n in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
