"""Fuseline's benchmark suite: ``nox -s bench`` (arguments after ``--`` come here).

::

    python benchmarks/run.py                 # everything, a few minutes
    python benchmarks/run.py --quick         # every workload shrunk: a smoke run
    python benchmarks/run.py --configs in-process,http-sqlite

It measures the workloads of ``workloads.py`` in each configuration of
``setups.py``, runs ``pgbench`` against the same PostgreSQL server as the
yardstick, prints a table and one JSON document, and writes that document to
``bench-results/``. Progress goes to stderr, so stdout holds only the table
and the JSON. See docs/performance.md for what each figure means.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_workflows import CHAIN, DIAMOND, SINGLE
from options import (
    IDLE_WORKERS,
    PGBENCH_CLIENTS,
    PGBENCH_SCALE,
    SCALED_WORKERS,
    Options,
    parse_args,
    settings,
)
from postgres import (
    backend_pids,
    database,
    pgbench_init,
    pgbench_tps,
    safe_url,
    server_settings,
)
from report import Figure, Report
from resources import machine, supported
from setups import HttpSetup, InProcessSetup, Setup
from targets import evaluate
from workloads import (
    direct_throughput,
    latency,
    percentile,
    throughput,
)

import fuseline


def say(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: the measurements and what they are recorded in."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.labels = options.labels()
        self.report = Report()
        self.resources: dict[str, dict[str, float | None]] = {}
        self._next_input = 0

    def _inputs(self, count: int) -> int:
        first = self._next_input
        self._next_input += count
        return first

    def _repeat(
        self, what: str, measure: Callable[[], Any], setup: Setup | None = None
    ) -> list[Any]:
        found = []
        for repetition in range(1, self.options.repetitions + 1):
            if setup is not None:
                setup.tidy()
            say(f"  {what} ({repetition}/{self.options.repetitions})")
            found.append(measure())
        return found

    # -- pgbench ---------------------------------------------------------------------
    def run_pgbench(self) -> None:
        """Measure the server's simple-update TPS with 2 and 8 clients."""
        with database(self.options.postgres_url, "pgbench") as url:
            say(f"pgbench: initialising (scale {PGBENCH_SCALE})")
            pgbench_init(url, PGBENCH_SCALE)
            for clients in PGBENCH_CLIENTS:
                seconds = self.options.pgbench_seconds
                self.report.pgbench[clients] = self._repeat(
                    f"pgbench -N -c {clients} -T {seconds}",
                    lambda c=clients, s=seconds: pgbench_tps(url, c, s),  # type: ignore[misc]
                )

    # -- one configuration -------------------------------------------------------------
    def measure(self, setup: Setup) -> None:
        """Every workload in ``setup``, then its idle CPU and memory."""
        o, sizes = self.options, self.options.sizes
        chosen = o.workloads
        setup.set_workers(o.workers)
        say(f"{setup.name}: warming up")
        for workflow in (SINGLE, CHAIN, DIAMOND):
            throughput(setup.client, workflow, 10, dispatchers=1, timeout=120)
        if "W1" in chosen:
            self._throughput(setup, "W1", SINGLE, sizes.w1_runs)
        if "W2" in chosen:
            self._throughput(setup, "W2", CHAIN, sizes.w2_runs)
        if "W3" in chosen:
            self._throughput(setup, "W3", DIAMOND, sizes.w3_runs)
        if "W2x4" in chosen:
            setup.set_workers(SCALED_WORKERS)
            self._throughput(setup, "W2 scaled", CHAIN, sizes.w2_runs)
            setup.set_workers(o.workers)
        if "L1" in chosen:
            self._latency(setup, "L1 single", SINGLE, sizes.l1_runs)
            self._latency(setup, "L1 chain", CHAIN, sizes.l1_runs)
        if "idle" in chosen:
            self._idle(setup)
        self._memory(setup)

    def _throughput(self, setup: Setup, key: str, workflow: Any, runs: int) -> None:
        label = self.labels[key]
        results = self._repeat(
            f"{setup.name}: {label}",
            lambda: throughput(
                setup.client,
                workflow,
                runs,
                dispatchers=self.options.dispatchers,
                timeout=max(120.0, runs / 5),
                first_input=self._inputs(runs),
                cpu=setup.cpu_usage,
            ),
            setup,
        )
        add = self.report.add
        steps = [r.steps_per_second for r in results]
        add(Figure(setup.name, label, "steps/s", "steps/s", steps, throughput=True))
        if key != "W1":
            runs_per_s = [r.runs_per_second for r in results]
            add(Figure(setup.name, label, "runs/s", "runs/s", runs_per_s, throughput=True))
        dispatch = [r.runs / r.dispatch_seconds for r in results]
        add(Figure(setup.name, label, "dispatch rate", "calls/s", dispatch))
        groups = list(results[0].cpu_seconds)
        for group in groups + (["total"] if len(groups) > 1 else []):
            per_step = [
                (sum(r.cpu_seconds.values()) if group == "total" else r.cpu_seconds[group])
                / r.steps
                * 1000
                for r in results
            ]
            add(Figure(setup.name, label, f"CPU/step {group}", "ms", per_step))

    def _latency(self, setup: Setup, key: str, workflow: Any, runs: int) -> None:
        label = self.labels[key]
        results = self._repeat(
            f"{setup.name}: {label}",
            lambda: latency(
                setup.client, workflow, runs, timeout=60, first_input=self._inputs(runs)
            ),
            setup,
        )
        for p in (50, 95, 99):
            values = [r.percentile(p) for r in results]
            self.report.add(Figure(setup.name, label, f"p{p}", "ms", values))
        for part, metric in (
            ("to_first_claim", "p50 to first claim"),
            ("in_steps", "p50 in steps"),
            ("to_client", "p50 end to client"),
        ):
            values = [percentile(getattr(r, part), 50) for r in results if getattr(r, part)]
            if values:
                self.report.add(Figure(setup.name, label, metric, "ms", values))

    def _idle(self, setup: Setup) -> None:
        label = self.labels["idle"]
        setup.set_workers(IDLE_WORKERS)
        time.sleep(1.0)  # let every worker settle into its long poll
        samples = self._repeat(
            f"{setup.name}: CPU while {IDLE_WORKERS} workers wait",
            lambda: setup.idle_cpu(self.options.idle_seconds),
        )
        broker = [b for b, _ in samples]
        if isinstance(setup, InProcessSetup):
            self.report.add(Figure(setup.name, label, "process CPU", "% of a core", broker))
            return
        self.report.add(Figure(setup.name, label, "broker CPU", "% of a core", broker))
        workers = [w for _, w in samples]
        self.report.add(Figure(setup.name, label, "worker CPU", "% of a core", workers))

    def _memory(self, setup: Setup) -> None:
        found = setup.resources()
        self.resources[setup.name] = found
        label = self.labels["all"]
        if isinstance(setup, InProcessSetup):
            shown = [("broker_peak_rss_mib", "process peak RSS")]
        else:
            shown = [
                ("broker_peak_rss_mib", "broker peak RSS"),
                ("worker_peak_rss_mib", "worker peak RSS"),
            ]
        for key, metric in shown:
            value = found.get(key)
            if value is not None:
                self.report.add(Figure(setup.name, label, metric, "MiB", [value]))

    def reference(self) -> None:
        """``Workflow.run()`` alone, without a broker: the floor under every configuration."""
        sizes = self.options.sizes
        for key, workflow, runs in (
            ("W1", SINGLE, sizes.w1_runs),
            ("W2", CHAIN, sizes.w2_runs),
            ("W3", DIAMOND, sizes.w3_runs),
        ):
            if key not in self.options.workloads:
                continue
            results = self._repeat(
                f"Workflow.run(): {self.labels[key]}",
                lambda w=workflow, n=runs: direct_throughput(w, n, first_input=self._inputs(n)),  # type: ignore[misc]
            )
            steps = [r.steps_per_second for r in results]
            self.report.add(Figure("Workflow.run()", self.labels[key], "steps/s", "steps/s", steps))

    # -- the whole run -------------------------------------------------------------------
    def open_setup(self, name: str, work_dir: Path) -> Setup:
        """Start the configuration called ``name``."""
        o = self.options
        if name == "in-process":
            return InProcessSetup(o.concurrency)
        if name == "http-sqlite":
            url = f"sqlite:///{work_dir / 'broker.sqlite3'}"
            return HttpSetup("sqlite", url, work_dir, o.concurrency, o.broker_processes)
        raise ValueError(name)

    def run_configuration(self, name: str) -> None:
        """Measure one configuration in a scratch directory of its own."""
        say(f"{name}: starting")
        with tempfile.TemporaryDirectory(prefix=f"fuseline-bench-{name}-") as scratch:
            work_dir = Path(scratch)
            if name == "http-postgresql":
                o = self.options
                with (
                    database(o.postgres_url, "broker") as url,
                    HttpSetup(
                        "postgresql",
                        url,
                        work_dir,
                        o.concurrency,
                        o.broker_processes,
                        backends=lambda: backend_pids(o.postgres_url, url),
                    ) as setup,
                ):
                    self.measure(setup)
                say(f"{name}: done")
                return
            with self.open_setup(name, work_dir) as setup:
                self.measure(setup)
        say(f"{name}: done")

    def run(self) -> dict[str, Any]:
        """Measure everything asked for and return the JSON document."""
        o = self.options
        started = datetime.now(UTC)
        load_before = os.getloadavg()
        postgres = None
        if "http-postgresql" in o.configurations:
            try:
                postgres = server_settings(o.postgres_url)
            except Exception as exc:
                raise SystemExit(
                    f"Cannot reach PostgreSQL at {safe_url(o.postgres_url)} ({exc}). Pass "
                    "--postgres-url (or set FUSELINE_BENCH_DATABASE_URL), or leave it out with "
                    "--configs in-process,http-sqlite."
                ) from None
            if o.pgbench:
                self.run_pgbench()
        for name in o.configurations:
            self.run_configuration(name)
        if "in-process" in o.configurations and {"W1", "W2", "W3"} & set(o.workloads):
            self.reference()
        finished = datetime.now(UTC)
        return {
            "suite": "fuseline-bench",
            "format": 1,
            "fuseline_version": fuseline.__version__,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_seconds": round((finished - started).total_seconds(), 1),
            "machine": machine(load_before, os.getloadavg()),
            "settings": settings(o),
            "postgresql": postgres,
            "pgbench": self.report.pgbench_json(),
            "results": self.report.figures_json(),
            "resources": self.resources,
            "targets": evaluate(self.report, self.labels),
        }


def _exit_on_sigterm() -> None:
    """Make SIGTERM end the run as Ctrl-C does: broker, workers and databases cleaned up.

    Without this, ``kill`` (or a CI timeout) ends this process at once and
    leaves the broker and worker processes running and the databases behind.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 when every figure was measured (targets may still be missed)."""
    options = parse_args(argv)
    _exit_on_sigterm()
    if not supported():
        print("The benchmarks read /proc and run on Linux only.", file=sys.stderr)
        return 2
    bench = Bench(options)
    document = bench.run()
    options.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = options.output_dir / f"bench-{stamp}{'-quick' if options.quick else ''}.json"
    text = json.dumps(document, indent=2)
    path.write_text(text + "\n")
    print(bench.report.table())
    print()
    for target in document["targets"]:
        if target["measured"] is None:
            continue
        verdict = {True: "met", False: "MISSED", None: "not judged"}[target["met"]]
        print(f"target: {target['target']}: {verdict} (measured {target['measured']:.4g})")
    print()
    print(text)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
