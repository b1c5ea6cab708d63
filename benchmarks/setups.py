"""The configurations measured: where the broker runs and how workers reach it.

- ``in-process``: a ``MemoryBroker`` in the benchmark's own process, reached
  through ``LocalBrokerClient``; each worker is a ``ProcessEngine`` serving
  in a thread of that process.
- ``http-sqlite`` and ``http-postgresql``: the broker server
  (``python -m fuseline.broker.http``) over a SQLite file or a PostgreSQL
  database, with bearer tokens as in production; each worker is a
  ``python -m fuseline.worker`` process; the benchmark talks to the broker
  with ``HttpBrokerClient``.

A setup can change its number of workers between workloads, and reports
peak memory and idle CPU.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import psycopg
from bench_workflows import ALL
from processes import ManagedProcess, ProcessGroup, free_port, wait_until
from resources import cpu_seconds, descendants, peak_rss_mib

from fuseline.broker import MemoryBroker
from fuseline.clients import BrokerClient, HttpBrokerClient, LocalBrokerClient
from fuseline.worker import ProcessEngine

__all__ = ["HttpSetup", "InProcessSetup", "Setup"]

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 20.0
# Seconds a worker waits at the broker in one request: the worker's default.
_POLL_WAIT = 5.0
# In-process engines wait less per poll, so that stopping one (which waits for
# its poll to return) takes a second, not five. Idle engines wake every half
# second anyway: that is the memory backend's own poll interval.
_IN_PROCESS_POLL_WAIT = 1.0


class Setup(ABC):
    """One configuration: a broker, a client for the benchmark, and workers.

    Args:
        concurrency: Steps each worker runs at once.
    """

    name: str
    client: BrokerClient

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency

    @abstractmethod
    def set_workers(self, count: int) -> None:
        """Start or stop workers until ``count`` are serving."""

    @abstractmethod
    def resources(self) -> dict[str, float | None]:
        """Peak resident memory (MiB) of the broker and the workers so far."""

    @abstractmethod
    def cpu_pids(self) -> tuple[list[int], list[int]]:
        """The processes whose CPU counts as the broker's, and as the workers'."""

    @abstractmethod
    def close(self) -> None:
        """Stop everything this setup started."""

    @abstractmethod
    def cpu_usage(self) -> dict[str, float]:
        """CPU seconds used so far by each group of processes involved."""

    def idle_cpu(self, seconds: float) -> tuple[float, float]:
        """CPU use while the current workers wait for work, as % of one core.

        Returns:
            The broker's use and the average worker's use.
        """
        broker, workers = self.cpu_pids()
        broker_before, workers_before = cpu_seconds(broker), cpu_seconds(workers)
        time.sleep(seconds)
        broker_used = cpu_seconds(broker) - broker_before
        workers_used = cpu_seconds(workers) - workers_before
        per_worker = workers_used / max(self.worker_count(), 1)
        return broker_used / seconds * 100, per_worker / seconds * 100

    @abstractmethod
    def worker_count(self) -> int:
        """How many workers are serving now."""

    def tidy(self) -> None:  # noqa: B027 - only PostgreSQL has something to do
        """Before a repetition: leave the database as a fresh run would find it."""

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class InProcessSetup(Setup):
    """A ``MemoryBroker`` and ``ProcessEngine`` threads, all in this process."""

    name = "in-process"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.broker = MemoryBroker()
        self.client = LocalBrokerClient(self.broker)
        self._engines: list[tuple[ProcessEngine, threading.Thread]] = []

    def worker_count(self) -> int:
        """How many engines are serving."""
        return len(self._engines)

    def set_workers(self, count: int) -> None:
        """Start or stop engine threads until ``count`` serve."""
        while len(self._engines) < count:
            engine = ProcessEngine(
                self.client, ALL, concurrency=self.concurrency, poll_wait=_IN_PROCESS_POLL_WAIT
            )
            thread = threading.Thread(
                target=engine.serve,
                kwargs={"handle_signals": False},
                name=f"bench-engine-{len(self._engines)}",
                daemon=True,
            )
            thread.start()
            self._engines.append((engine, thread))
        wait_until(
            lambda: all(engine.worker_id is not None for engine, _ in self._engines),
            _START_TIMEOUT,
            "the engines to register",
        )
        surplus, self._engines = self._engines[count:], self._engines[:count]
        for engine, _ in surplus:
            engine.stop()
        for _, thread in surplus:
            thread.join(timeout=_STOP_TIMEOUT)

    def resources(self) -> dict[str, float | None]:
        """One process holds the broker and the workers."""
        peak = peak_rss_mib(os.getpid())
        return {"broker_peak_rss_mib": peak, "worker_peak_rss_mib": peak}

    def cpu_pids(self) -> tuple[list[int], list[int]]:
        """Everything is this process: its CPU is counted as the broker's."""
        return [os.getpid()], []

    def cpu_usage(self) -> dict[str, float]:
        """This process does everything."""
        return {"process": cpu_seconds([os.getpid()])}

    def close(self) -> None:
        """Stop the engines and close the broker."""
        self.set_workers(0)
        self.broker.close()


class HttpSetup(Setup):
    """The broker server over SQLite or PostgreSQL, with worker processes.

    Args:
        kind: ``sqlite`` or ``postgresql``.
        database_url: Where the broker keeps its state.
        work_dir: Where logs (and the SQLite file) go.
        concurrency: Steps each worker runs at once.
        broker_processes: The server's ``--processes``.
        backends: Returns the process ids of the database server's
            processes serving the broker (PostgreSQL only).
    """

    def __init__(
        self,
        kind: str,
        database_url: str,
        work_dir: Path,
        concurrency: int,
        broker_processes: int = 1,
        backends: Callable[[], list[int]] | None = None,
    ) -> None:
        super().__init__(concurrency)
        self._backends = backends
        self._database_url = database_url if kind == "postgresql" else None
        self.name = f"http-{kind}"
        self.url = f"http://127.0.0.1:{free_port()}"
        worker_token, client_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._worker_env = {"FUSELINE_BROKER_URL": self.url, "FUSELINE_WORKER_TOKEN": worker_token}
        self._group = ProcessGroup(work_dir, {})
        self._workers: list[ManagedProcess] = []
        self._started = 0
        self._worker_peaks: list[float] = []
        self._broker = self._group.start(
            "broker",
            [
                "-m",
                "fuseline.broker.http",
                "--port",
                self.url.rsplit(":", 1)[1],
                "--database-url",
                database_url,
                "--processes",
                str(broker_processes),
                "--log-level",
                "WARNING",
            ],
            {"FUSELINE_WORKER_TOKEN": worker_token, "FUSELINE_CLIENT_TOKEN": client_token},
        )
        self.client = HttpBrokerClient(self.url, client_token, timeout=60)
        try:
            wait_until(self._healthy, _START_TIMEOUT, f"the broker at {self.url}", pause=0.1)
        except BaseException:
            self.close()
            raise

    def _healthy(self) -> bool:
        self._group.check_alive()
        try:
            assert isinstance(self.client, HttpBrokerClient)  # noqa: S101 - set in __init__
            self.client.health()
        except Exception:
            return False
        return True

    def worker_count(self) -> int:
        """How many worker processes are serving."""
        return len(self._workers)

    def tidy(self) -> None:
        """Vacuum PostgreSQL's tables, as pgbench does before each of its runs.

        Every step leaves dead row versions behind, and on a server whose
        autovacuum is off (or has not come round yet) the later repetitions
        would pay for the earlier ones' (see docs/performance.md).
        """
        if self._database_url is None:
            return
        with psycopg.connect(self._database_url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")

    def set_workers(self, count: int) -> None:
        """Start or stop worker processes until ``count`` serve, registered."""
        names = []
        while len(self._workers) < count:
            self._started += 1
            name = f"worker-{self._started}"
            names.append(name)
            args = ["-m", "fuseline.worker", "bench_workflows:ALL", "--name", name]
            args += ["--concurrency", str(self.concurrency), "--log-level", "WARNING"]
            args += ["--poll-wait", str(_POLL_WAIT)]
            self._workers.append(self._group.start(name, args, self._worker_env))
        if names:
            wait_until(
                lambda: self._registered(names), _START_TIMEOUT, "the workers to register", 0.1
            )
        surplus, self._workers = self._workers[count:], self._workers[:count]
        self._stop_workers(surplus)

    def _registered(self, names: list[str]) -> bool:
        self._group.check_alive()
        known = {worker.name for worker in self.client.list_workers()}
        return all(name in known for name in names)

    def _stop_workers(self, workers: list[ManagedProcess]) -> None:
        for worker in workers:
            self._worker_peaks.append(peak_rss_mib(worker.pid) or 0.0)
        self._group.stop(workers, _STOP_TIMEOUT)

    def _broker_servers(self) -> list[int]:
        return [pid for pid in descendants(self._broker.pid) if pid != self._broker.pid]

    def resources(self) -> dict[str, float | None]:
        """The largest server process's peak, the supervisor's, and the largest worker's."""
        servers = [peak_rss_mib(pid) or 0.0 for pid in self._broker_servers()]
        workers = self._worker_peaks + [peak_rss_mib(w.pid) or 0.0 for w in self._workers]
        return {
            "broker_peak_rss_mib": max(servers, default=None),
            "broker_supervisor_peak_rss_mib": peak_rss_mib(self._broker.pid),
            "worker_peak_rss_mib": max(workers, default=None),
        }

    def cpu_pids(self) -> tuple[list[int], list[int]]:
        """The broker's processes (supervisor and servers), and the workers'."""
        return descendants(self._broker.pid), [w.pid for w in self._workers]

    def cpu_usage(self) -> dict[str, float]:
        """CPU seconds of the broker, the workers, this process and the database backends."""
        broker, workers = self.cpu_pids()
        used = {
            "broker": cpu_seconds(broker),
            "workers": cpu_seconds(workers),
            "client": cpu_seconds([os.getpid()]),
        }
        if self._backends is not None:
            used["postgresql"] = cpu_seconds(self._backends())
        return used

    def close(self) -> None:
        """Stop the workers, then the broker."""
        self._stop_workers(self._workers)
        self._workers = []
        self.client.close()
        self._group.stop_all()
