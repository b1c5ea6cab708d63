"""The quick-start demo: a broker server, two worker processes, a branching workflow.

Run it with ``python3 dev.py demo`` (or ``python examples/demo.py`` with the
packages installed). It:

1. starts the broker server (``python -m fuseline.broker.http``) on a free
   port, keeping its state in a SQLite file in a temporary directory, with a
   worker token and a client token;
2. starts two workers (``python -m fuseline.worker demo_workflows:workflow``),
   each running up to two steps at a time;
3. dispatches one run of the ``ship-order`` workflow (see
   ``demo_workflows.py``) per order over HTTP, waits for them and prints what
   happened: which branch each order took, the courier booking that needed a
   retry, and the fraud check that timed out;
4. stops the workers and the broker with SIGTERM, also when you press Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO

from demo_workflows import ORDERS, workflow

from fuseline import RunDetails, Status
from fuseline.clients import HttpBrokerClient

HERE = Path(__file__).resolve().parent
WORKERS = 2
STEPS_PER_WORKER = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """The demo's child processes, each logging to a file, stopped in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        # A session of their own: Ctrl-C reaches only this script, which then
        # stops the children in order instead of all of them at once.
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, process, log))

    def check_alive(self) -> None:
        for name, process, _ in self.started:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early with status {process.returncode}")

    def stop_all(self) -> dict[str, int]:
        statuses: dict[str, int] = {}
        for name, process, log in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                statuses[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[name] = process.wait()
            log.close()
        self.started.clear()
        return statuses

    def show_logs(self) -> None:
        for path in sorted(self.log_dir.glob("*.log")):
            print(f"----- {path.name} -----")
            print(path.read_text(errors="replace"))


def wait_for_broker(client: HttpBrokerClient, processes: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        try:
            client.health()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def describe(run: RunDetails) -> tuple[str, str]:
    """The branch a run took, and its result or why it failed."""
    route = "-"
    if run.steps["ChooseRoute"].status is Status.SUCCEEDED:
        route = str(run.steps["ChooseRoute"].result)
    if run.status is Status.SUCCEEDED and run.result is not None:
        return route, str(run.result["Confirm"])
    failed = [s for s in run.steps.values() if s.status is Status.FAILED and s.error]
    if failed and failed[0].error is not None:
        error = failed[0].error
        return route, f"{failed[0].name} failed: {error.type}: {error.message}"
    return route, run.status.value


def start_broker(processes: Processes, state_dir: Path, port: int, tokens: dict[str, str]) -> None:
    # No DATABASE_URL: the broker keeps its state in a SQLite file in its
    # working directory, the temporary directory here.
    processes.start(
        "broker",
        ["-m", "fuseline.broker.http", "--port", str(port), "--log-level", "WARNING"],
        cwd=state_dir,
        env=clean_environment() | tokens,
    )


def start_workers(processes: Processes, url: str, worker_token: str) -> None:
    env = clean_environment() | {"FUSELINE_BROKER_URL": url, "FUSELINE_WORKER_TOKEN": worker_token}
    for number in range(1, WORKERS + 1):
        args = ["-m", "fuseline.worker", "demo_workflows:workflow"]
        args += ["--concurrency", str(STEPS_PER_WORKER), "--name", f"demo-worker-{number}"]
        processes.start(f"worker-{number}", args, cwd=HERE, env=env)


def clean_environment() -> dict[str, str]:
    """This process's environment without settings that would change the demo."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FUSELINE_", "DATABASE_"))}


def print_report(finished: dict[int, RunDetails], worker_names: dict[str, str]) -> None:
    print(f"{'order':<6} {'customer':<9} {'amount':>8}  {'route':<9} {'status':<10} result")
    for order_id, run in finished.items():
        customer, amount = ORDERS[order_id]
        route, outcome = describe(run)
        print(
            f"{order_id:<6} {customer:<9} {amount:>8.2f}  {route:<9} "
            f"{run.status.value:<10} {outcome}"
        )
    per_worker = Counter(
        worker_names.get(step.worker_id, step.worker_id)
        for run in finished.values()
        for step in run.steps.values()
        if step.worker_id is not None
    )
    shares = ", ".join(f"{name}: {count}" for name, count in sorted(per_worker.items()))
    print(f"\nSteps run per worker: {shares}")


def run_demo(processes: Processes, state_dir: Path) -> bool:
    """Start everything, run the orders and print them; True when all went as designed."""
    url = f"http://127.0.0.1:{free_port()}"
    worker_token, client_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = {"FUSELINE_WORKER_TOKEN": worker_token, "FUSELINE_CLIENT_TOKEN": client_token}
    start_broker(processes, state_dir, int(url.rsplit(":", 1)[1]), tokens)
    print("Fuseline demo")
    print(f"  broker   {url}, state in a SQLite file under {state_dir}")
    with HttpBrokerClient(url, client_token) as client:
        wait_for_broker(client, processes)
        start_workers(processes, url, worker_token)
        print(f"  workers  {WORKERS} processes, up to {STEPS_PER_WORKER} steps at a time each")
        schema = workflow.to_schema()
        runs = {o: client.dispatch_workflow(schema, {"order_id": o}) for o in ORDERS}
        print(f"  runs     one run of {schema.workflow_id!r} per order, {len(runs)} in all\n")
        finished = {o: client.wait_for_run(run_id, 120) for o, run_id in runs.items()}
        names = {w.worker_id: w.name or w.worker_id for w in client.list_workers()}
    print_report(finished, names)
    statuses = Counter(run.status for run in finished.values())
    # By design every order ships except mallory's, whose fraud check times out.
    return statuses == Counter({Status.SUCCEEDED: len(ORDERS) - 1, Status.FAILED: 1})


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fuseline-demo-") as tmp:
        processes = Processes(Path(tmp))
        ok = False
        try:
            ok = run_demo(processes, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the workers and the broker")
        finally:
            exits = processes.stop_all()
            clean = all(status == 0 for status in exits.values())
            note = "" if clean else f" (exit statuses: {exits})"
            print(f"Stopped the workers and the broker{note}.")
            if not (ok and clean):
                processes.show_logs()
        return 0 if ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
