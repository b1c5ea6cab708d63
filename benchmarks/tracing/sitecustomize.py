"""Timestamps at the hot path's calls, in every process that imports Fuseline (tracing only).

``benchmarks/latency_trace.py`` puts this folder first on ``PYTHONPATH`` and
sets ``BENCH_TRACE`` to a file name prefix; Python then imports this
module at start-up in the benchmark, the broker and the workers alike. It
wraps the methods listed in ``TRACED`` as their modules are imported, and
records ``time.monotonic_ns()`` (one clock for every process on the machine)
when each call starts and ends, with the thread's name. Each process (forked ones
included) appends its records to ``PREFIX.PID`` every fifth of a second and
when it exits normally.

With ``BENCH_TRACE_PSYCOPG`` set too, psycopg's statements, pipelines,
``BEGIN`` and ``COMMIT`` are stamped as well. Without ``BENCH_TRACE`` this
module does nothing.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

# module: (class, method) pairs whose calls are stamped.
TRACED: dict[str, list[tuple[str, str]]] = {
    "fuseline.clients._http": [
        ("HttpBrokerClient", "run_workflow"),
        ("HttpBrokerClient", "wait_for_run"),
        ("HttpBrokerClient", "get_steps"),
        ("HttpBrokerClient", "report_step"),
        ("HttpBrokerClient", "report_steps"),
    ],
    "fuseline.worker._runners": [("StepJob", "execute")],
    "fuseline.worker._outbox": [("Outbox", "put")],
    "fuseline.broker._storage_broker": [
        ("StorageBroker", "dispatch_workflow"),
        ("StorageBroker", "get_steps"),
        ("StorageBroker", "report_step"),
        ("StorageBroker", "report_steps"),
        ("StorageBroker", "await_run"),
    ],
    "fuseline.storage._postgres": [("PostgresStorage", "atomic")],
    "fuseline.storage._sqlite": [("SQLiteStorage", "atomic")],
}

# With BENCH_TRACE_PSYCOPG set: inside PostgreSQL transactions too.
PSYCOPG: dict[str, list[tuple[str, str]]] = {
    "psycopg.connection": [("Connection", "pipeline")],
    "psycopg.cursor": [("Cursor", "execute")],
    "psycopg.transaction": [("Transaction", "__enter__"), ("Transaction", "__exit__")],
}

_records: list[tuple[int, str, str]] = []


def _stamped(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread().name
        _records.append((time.monotonic_ns(), f"{label}>", thread))
        try:
            return method(*args, **kwargs)
        finally:
            _records.append((time.monotonic_ns(), f"{label}<", thread))

    return call


class _Wrapping(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for class_name, method_name in TRACED[self._name]:
            owner = getattr(module, class_name, None)
            if owner is not None and method_name in vars(owner):
                label = f"{class_name}.{method_name}"
                setattr(owner, method_name, _stamped(label, vars(owner)[method_name]))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in TRACED:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Wrapping(spec.loader, name)
        return spec


class _Sink:
    """Appends this process's records to its own file, from a thread of its own."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._path = ""
        self.open()

    def open(self) -> None:
        """Start this process's file and flushing thread (again in a forked child)."""
        del _records[:]
        self._lock = threading.Lock()  # a forked child may inherit it held
        self._path = f"{self._prefix}.{os.getpid()}"
        with open(self._path, "w") as out:
            out.write(" ".join(sys.argv[:2]) + "\n")
        threading.Thread(target=self._keep_flushing, name="trace-flush", daemon=True).start()

    def flush(self) -> None:
        with self._lock:
            taken = _records[:]
            del _records[: len(taken)]
            if taken:
                with open(self._path, "a") as out:
                    out.writelines(f"{ns} {label} {thread}\n" for ns, label, thread in taken)

    def _keep_flushing(self) -> None:
        while True:
            time.sleep(0.2)
            self.flush()


def _start(prefix: str) -> None:
    if os.environ.get("BENCH_TRACE_PSYCOPG"):
        TRACED.update(PSYCOPG)
    sink = _Sink(prefix)
    # The broker's server processes are forked from its supervisor.
    os.register_at_fork(after_in_child=sink.open)
    atexit.register(sink.flush)
    sys.meta_path.insert(0, _Finder())


_prefix = os.environ.get("BENCH_TRACE")
if _prefix:
    _start(_prefix)
