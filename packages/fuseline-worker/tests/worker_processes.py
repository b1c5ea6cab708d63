"""Real broker and worker processes for the worker's process tests.

The broker server is started with the broker package's own test helpers
(``packages/fuseline-broker/tests/http_server_support.py``), so both suites
start it the same way; workers are ``python -m fuseline.worker`` processes
running the workflows of ``worker_flows.py``. Every wait polls a condition
until a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BROKER_TESTS = HERE.parents[1] / "fuseline-broker" / "tests"
if str(BROKER_TESTS) not in sys.path:
    sys.path.insert(0, str(BROKER_TESTS))

from http_server_support import (  # noqa: E402
    CLIENT_TOKEN,
    WORKER_TOKEN,
    RunningServer,
    launch,
    postgres_admin_url,
    postgres_url,
    start_server,
    wait_until,
)
from worker_flows import LEDGER_VARIABLE  # noqa: E402

from fuseline import RunDetails  # noqa: E402
from fuseline.clients import HttpBrokerClient  # noqa: E402

__all__ = [
    "CLIENT_TOKEN",
    "WORKER_TOKEN",
    "Cluster",
    "WorkerProcess",
    "open_cluster",
    "postgres_admin_url",
    "postgres_url",
    "start_server",
    "wait_until",
]

RUN_TIMEOUT = 60.0

STOP_TIMEOUT = 30.0

STARTUP_TIMEOUT = 30.0


@dataclass
class WorkerProcess:
    """A ``python -m fuseline.worker`` process started by a test."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not exit in {timeout}s:\n{self.log()}") from None

    def stop(self) -> int:
        """SIGTERM the worker and wait for its exit status.

        A worker started a moment ago may still be in the interpreter's own
        start-up, where any process dies by SIGTERM; it gets a few seconds to
        reach the worker command first (which then stops cleanly even while
        loading its workflows).
        """
        wait_until(
            lambda: self.process.poll() is not None or "fuseline.worker" in self.log(),
            STARTUP_TIMEOUT,
            f"{self.name} to start",
        )
        if self.process.poll() is None:
            self.send(signal.SIGTERM)
        return self.wait()


def start_worker(
    url: str,
    folder: Path,
    name: str,
    *options: str,
    token: str | None = WORKER_TOKEN,
    specs: tuple[str, ...] = ("worker_flows:everything",),
) -> WorkerProcess:
    """Start a worker process that logs to ``folder/<name>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
    env[LEDGER_VARIABLE] = str(folder / "ledger")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    if token is not None:
        env["FUSELINE_WORKER_TOKEN"] = token
    (folder / "ledger").mkdir(exist_ok=True)
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fuseline.worker",
                *specs,
                "--broker",
                url,
                "--name",
                name,
                "--poll-wait",
                "0.5",
                *options,
            ],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals from the test reach only this worker
        )
    return WorkerProcess(name, process, log_path)


@dataclass
class Cluster:
    """A broker server, its client, and the workers a test starts."""

    server: RunningServer
    folder: Path
    client: HttpBrokerClient
    database_url: str | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger"

    def start_worker(self, name: str, *options: str, **kwargs: Any) -> WorkerProcess:
        worker = start_worker(self.server.url, self.folder, name, *options, **kwargs)
        self.workers.append(worker)
        return worker

    def wait_registered(self, *names: str, timeout: float = 30.0) -> None:
        def registered() -> bool:
            for worker in self.workers:
                if worker.process.poll() is not None:
                    raise AssertionError(f"{worker.name} exited early:\n{worker.log()}")
            return set(names) <= {w.name for w in self.client.list_workers()}

        wait_until(registered, timeout, f"workers {names} to register")

    def start_server_again(self) -> None:
        """Start the stopped broker server again, on the same port and storage."""
        assert self.server.process.poll() is not None, "stop the server first"
        port = int(self.server.url.rsplit(":", 1)[1])
        env = {"FUSELINE_WORKER_TOKEN": WORKER_TOKEN, "FUSELINE_CLIENT_TOKEN": CLIENT_TOKEN}
        if self.database_url is not None:
            env["DATABASE_URL"] = self.database_url
        process, log_path, _ = launch(self.folder, env=env, port=port)
        self.server = RunningServer(process, self.server.url, log_path)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the broker exited on restart:\n{self.server.log()}")
            try:
                self.client.health()
            except Exception:
                return False
            return True

        wait_until(healthy, 30, "the restarted broker to answer")

    def finished(self, run_id: str) -> RunDetails:
        """Wait for the run to end; show the workers' logs when it does not."""
        try:
            return self.client.wait_for_run(run_id, RUN_TIMEOUT)
        except Exception:
            print(self.logs())
            raise

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()}" for w in self.workers)

    def close(self) -> list[str]:
        """Stop the workers still running; return problems (non-zero exits)."""
        problems = []
        for worker in self.workers:
            if worker.process.poll() is None:
                code = worker.stop()
                if code != 0:
                    problems.append(f"{worker.name} exited with {code}:\n{worker.log()}")
        with contextlib.suppress(Exception):
            self.client.close()
        return problems


@contextlib.contextmanager
def open_cluster(folder: Path, database_url: str | None) -> Iterator[Cluster]:
    """Start a broker server; stop its workers and itself afterwards, checking exit codes."""
    server = start_server(folder, database_url=database_url)
    cluster = Cluster(server, folder, HttpBrokerClient(server.url, CLIENT_TOKEN), database_url)
    try:
        yield cluster
    finally:
        problems = cluster.close()
        code = cluster.server.stop()
        if code != 0:
            problems.append(f"the broker exited with {code}:\n{cluster.server.log()}")
        assert not problems, "\n\n".join(problems)
