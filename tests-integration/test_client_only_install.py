"""An application with only the fuseline-client wheel dispatches a run and reads its result.

``nox -s packaging`` installs each wheel alone in a fresh environment and
points ``FUSELINE_CLIENT_ONLY_PYTHON`` at the interpreter of the one that has
just fuseline-client (and core). This test starts a broker server, plays the
worker itself over HTTP, and runs a script in that environment: the script
must dispatch, wait and print the result without robyn, psycopg, the broker
or the worker being installed there.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages/fuseline-broker/tests"))
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, serving

from fuseline import Step, StepReport, Workflow
from fuseline.clients import HttpBrokerClient

CLIENT_ONLY_PYTHON = os.environ.get("FUSELINE_CLIENT_ONLY_PYTHON")

SCRIPT = """
import importlib.util, json, sys
from fuseline.clients import HttpBrokerClient

present = [m for m in ("robyn", "psycopg", "fuseline.broker", "fuseline.worker")
           if importlib.util.find_spec(m) is not None]
url, token = sys.argv[1], sys.argv[2]
with HttpBrokerClient(url, token) as client:
    run_id = client.dispatch("client-only-greet", {"name": "Ada"})
    run = client.wait_for_run(run_id, timeout=60)
print(json.dumps({"status": run.status.value, "result": run.result, "present": present}))
"""


class Greet(Step):
    def run_step(self, name: str) -> str:
        return f"Hello, {name}!"


@pytest.mark.skipif(
    not CLIENT_ONLY_PYTHON,
    reason="needs the client-only wheel environment that `nox -s packaging` builds",
)
def test_a_client_only_install_dispatches_and_reads_the_result(tmp_path: Path) -> None:
    assert CLIENT_ONLY_PYTHON is not None
    greet = Greet()
    workflow = Workflow(outputs=[greet], workflow_id="client-only-greet")
    with serving(tmp_path, database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}") as server:
        worker = HttpBrokerClient(server.url, WORKER_TOKEN)
        worker_id = worker.register_worker([workflow.to_schema()])

        def work_one() -> None:
            a = worker.get_step(worker_id, wait=60)
            assert a is not None
            result = workflow._execute_step(greet, a.results, a.workflow_inputs)
            worker.report_step(
                worker_id,
                StepReport(
                    workflow_id=a.workflow_id,
                    instance_id=a.instance_id,
                    step_name=a.step_name,
                    state=greet.state,
                    result=result,
                    lease_token=a.lease_token,
                ),
            )

        working = threading.Thread(target=work_one, daemon=True)
        working.start()
        done = subprocess.run(
            [CLIENT_ONLY_PYTHON, "-c", SCRIPT, server.url, CLIENT_TOKEN],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        working.join(timeout=60)
        worker.close()
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == {
        "status": "SUCCEEDED",
        "result": {"Greet": "Hello, Ada!"},
        "present": [],
    }
