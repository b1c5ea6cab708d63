"""Run schemathesis against a live broker server and read its JSON report.

Shared by the broker's own API check (``test_http_openapi.py``) and the
longer fuzzing case of the fault suite (``tests-integration/
test_fault_openapi.py``). Schemathesis runs as a command: its pytest plugin
does not support the pytest this project uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROBYN_MULTIPART_PROBE", "every_request_answered", "run_schemathesis"]

# Robyn (the web server under the broker) answers a multipart Content-Type
# without a boundary with a plain 500 before any broker code runs; see
# docs/deployment.md, where the reverse proxy refuses such requests.
ROBYN_MULTIPART_PROBE = "ST102"


def run_schemathesis(
    url: str,
    folder: Path,
    token: str,
    *options: str,
    config: str | None = None,
    timeout: float = 240,
) -> dict[str, Any]:
    """Run ``schemathesis run`` on the server's document; its JSON report, plus its output.

    Args:
        url: The server's base URL.
        folder: Where the report (and the configuration file) are written.
        token: Sent as a bearer token with every request.
        options: More command-line options (examples, seed, checks, timeouts).
        config: Contents of a ``schemathesis.toml`` to use, if any.
        timeout: Seconds the whole run may take.
    """
    report = folder / "schemathesis.json"
    command = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
    ]
    if config is not None:
        config_file = folder / "schemathesis.toml"
        config_file.write_text(config)
        command += ["--config-file", str(config_file)]
    command += [
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        *options,
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    done = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert report.exists(), done.stdout + done.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = done.stdout
    return result


def every_request_answered(log: str) -> bool:
    """Whether each request the server's DEBUG log shows starting also shows its answer."""
    return log.count(" started\n") == len(re.findall(r" -> \d{3} \(", log))
