"""The fault suite's harness: real brokers, workers and PostgreSQL, and the faults injected.

Processes are started with the test helpers of the other suites: the broker
server with ``packages/fuseline-broker/tests/http_server_support.py`` and the
workers with ``packages/fuseline-worker/tests/worker_processes.py``. The
workers run the workflows of ``fault_flows.py``, whose steps write every
execution to per-process ledger files; ``fault_checker.py`` compares those
ledgers with the broker's view of each run once a test is over.

Every wait polls a condition until a deadline; the only sleeps are the pauses
of a chaos schedule between two faults.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELPER_FOLDERS = (
    ROOT / "packages" / "fuseline-worker" / "tests",
    ROOT / "packages" / "fuseline-broker" / "tests",
)
for _folder in HELPER_FOLDERS:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import pytest  # noqa: E402
from http_server_support import (  # noqa: E402
    CLIENT_TOKEN,
    WORKER_TOKEN,
    free_port,
    start_server,
    wait_until,
)
from postgres_support import _server_programs, cluster_folder  # noqa: E402
from worker_processes import Cluster, WorkerProcess, open_cluster, start_worker  # noqa: E402

from fuseline import RunDetails, Status, Workflow  # noqa: E402
from fuseline.clients import HttpBrokerClient  # noqa: E402
from fuseline.errors import BrokerUnavailableError, WaitTimeoutError  # noqa: E402

__all__ = [
    "CLIENT_TOKEN",
    "WORKER_TOKEN",
    "Fault",
    "FaultCluster",
    "PrivatePostgres",
    "fault_cluster",
    "free_port",
    "start_server",
    "wait_until",
]

SPECS = ("fault_flows:everything",)

# -- a broker with workers that can be killed ------------------------------------------


@dataclass
class Kill:
    at: float
    pid: int
    name: str


@dataclass
class Fault:
    """A fault the test injected: what, and when it began and ended (epoch seconds)."""

    label: str
    began: float
    ended: float


@dataclass
class FaultCluster:
    """A broker server, workers in named slots, and a record of the faults injected."""

    cluster: Cluster
    backend: str
    worker_options: tuple[str, ...] = ("--concurrency", "4")
    slots: dict[str, WorkerProcess] = field(default_factory=dict)
    slot_options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    slot_urls: dict[str, str] = field(default_factory=dict)
    generation: Counter[str] = field(default_factory=Counter)
    kills: list[Kill] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # run key -> run id
    began: float = field(default_factory=time.monotonic)
    began_epoch: float = field(default_factory=time.time)
    restarts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def client(self) -> HttpBrokerClient:
        return self.cluster.client

    @property
    def ledger(self) -> Path:
        return self.cluster.ledger

    @property
    def workers(self) -> list[WorkerProcess]:
        """Every worker process started so far, dead or alive."""
        return self.cluster.workers

    # -- workers -----------------------------------------------------------------
    def start_workers(self, count: int, *options: str, url: str | None = None) -> list[str]:
        """Start ``count`` workers in new slots and wait until they are registered.

        They talk to ``url``, by default the cluster's broker server.
        """
        names = []
        for _ in range(count):
            slot = f"w{len(self.slots)}"
            self.slot_options[slot] = options or self.worker_options
            self.slot_urls[slot] = url or self.cluster.server.url
            names.append(self._start(slot))
        self.cluster.wait_registered(*names)
        return names

    def _start(self, slot: str) -> str:
        self.generation[slot] += 1
        name = f"{slot}.{self.generation[slot]}"
        worker = start_worker(
            self.slot_urls[slot], self.cluster.folder, name, *self.slot_options[slot], specs=SPECS
        )
        self.cluster.workers.append(worker)
        self.slots[slot] = worker
        return name

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.slots.values() if w.process.poll() is None]

    def kill(self, worker: WorkerProcess) -> None:
        """SIGKILL one worker and note when."""
        with self._lock:
            at = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            worker.process.wait()
            self.kills.append(Kill(at, worker.pid, worker.name))

    def kill_random(self, rng: random.Random) -> WorkerProcess | None:
        live = self.live_workers()
        if not live:
            return None
        victim = rng.choice(live)
        self.kill(victim)
        return victim

    def restart_dead(self) -> None:
        """Start a new worker in every slot whose worker has exited."""
        with self._lock:
            for slot, worker in list(self.slots.items()):
                if worker.process.poll() is not None:
                    self._start(slot)
                    self.restarts += 1

    @contextlib.contextmanager
    def supervising(self, interval: float = 0.1) -> Iterator[None]:
        """Restart dead workers (the job of a process manager) while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                self.restart_dead()

        thread = threading.Thread(target=loop, name="fault-supervisor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)

    @contextlib.contextmanager
    def fault(self, label: str) -> Iterator[None]:
        """Note the block as a fault: it begins with the block and ends after it."""
        began = time.time()
        try:
            yield
        finally:
            self.faults.append(Fault(label, began, time.time()))

    def crashed_pids(self) -> set[int]:
        """Workers that died without being asked: killed by the test or by a step."""
        crashed = {kill.pid for kill in self.kills}
        for worker in self.workers:
            code = worker.process.poll()
            if code is not None and code < 0:
                crashed.add(worker.pid)
        return crashed

    # -- runs --------------------------------------------------------------------
    def dispatch(
        self,
        workflow: Workflow,
        count: int,
        inputs: Callable[[int], dict[str, Any]] = lambda i: {},
        *,
        client: HttpBrokerClient | None = None,
        timeout: float = 60.0,
    ) -> list[str]:
        """Start ``count`` runs; return their keys.

        Each run's key is also its idempotency key, so a dispatch that failed
        while the broker was away is simply sent again, and never makes two runs.
        """
        schema = workflow.to_schema()
        keys = []
        for i in range(count):
            key = uuid.uuid4().hex[:12]
            body = {"key": key, **inputs(i)}
            deadline = time.monotonic() + timeout
            while True:
                try:
                    run_id = (client or self.client).dispatch_workflow(
                        schema, body, idempotency_key=f"fault-{key}"
                    )
                    break
                except BrokerUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.runs[key] = run_id
            keys.append(key)
        return keys

    def open_runs(self) -> bool:
        """Whether any run is still pending or running (one cheap request each)."""
        for status in (Status.PENDING, Status.RUNNING):
            if self.client.list_runs(status=status, limit=1).items:
                return True
        return False

    def wait_all(self, timeout: float) -> dict[str, RunDetails]:
        """Wait for every run; return the details of each (unfinished ones as they are)."""
        deadline = time.monotonic() + timeout
        details: dict[str, RunDetails] = {}
        for key, run_id in self.runs.items():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                details[key] = self.client.wait_for_run(run_id, remaining)
            except (WaitTimeoutError, BrokerUnavailableError):
                details[key] = self.client.get_run(run_id)
        return details

    def worker_pids(self) -> dict[str, int]:
        """Broker worker id -> pid of the process that registered it."""
        by_name = {w.name: w.pid for w in self.workers}
        return {
            info.worker_id: by_name[info.name]
            for info in self.client.list_workers()
            if info.name in by_name
        }

    def seconds(self) -> float:
        return time.monotonic() - self.began


@contextlib.contextmanager
def fault_cluster(folder: Path, database_url: str | None, backend: str) -> Iterator[FaultCluster]:
    """A broker (and the workers a test starts) that must all stop cleanly at the end.

    Workers still alive are stopped with SIGTERM and must exit 0; so must the
    broker (see ``worker_processes.open_cluster``).
    """
    with open_cluster(folder, database_url) as cluster:
        yield FaultCluster(cluster, backend)


# -- a PostgreSQL cluster of the test's own, to stop and start ------------------------------


def _debian_server_programs() -> tuple[str, str] | None:
    """initdb and pg_ctl where Debian's packages put them, off PATH."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        initdb, pg_ctl = folder / "initdb", folder / "pg_ctl"
        if initdb.exists() and pg_ctl.exists():
            return str(initdb), str(pg_ctl)
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster that a test may restart as it likes.

    The machine's shared server is never touched. Built like the private
    cluster of ``postgres_support.py``: ``initdb`` and ``pg_ctl`` run as the
    ``postgres`` user when the tests run as root.
    """

    def __init__(self) -> None:
        programs = _server_programs() or _debian_server_programs()
        if programs is None:
            pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.initdb, self.pg_ctl = programs
        self.prefix: list[str] = []
        owner = None
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run a cluster")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        folder = self.folder = cluster_folder("fuseline-fault-pg-", owner)
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [*self.prefix, self.pg_ctl, "-D", str(self.data), *args]
        # The server's own output goes to its log file (-l), never to our pipes,
        # which it would otherwise hold open for as long as it runs.
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{command} failed: {done.stdout}{done.stderr}\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        if not self.data.exists():
            subprocess.run(
                [
                    *self.prefix,
                    self.initdb,
                    *("-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=60"
        )
        self._pg_ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m MODE``: the server comes back with the same options."""
        self._pg_ctl("-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def terminate_backends(self, database: str) -> int:
        """End every connection to ``database`` (the broker's), like a failover would."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        return len(rows)

    def close(self) -> None:
        """Stop the server at once and delete its files."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
