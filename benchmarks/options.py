"""The benchmark's command line: what to measure, and how much of it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads import WorkloadSizes

__all__ = [
    "CONFIGURATIONS",
    "IDLE_WORKERS",
    "PGBENCH_CLIENTS",
    "PGBENCH_SCALE",
    "SCALED_WORKERS",
    "WORKLOADS",
    "Options",
    "parse_args",
    "settings",
]

CONFIGURATIONS = ("in-process", "http-sqlite", "http-postgresql")
WORKLOADS = ("W1", "W2", "W3", "W2x4", "L1", "idle")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
PGBENCH_CLIENTS = (2, 8)
PGBENCH_SCALE = 10
SCALED_WORKERS = 4
IDLE_WORKERS = 8


@dataclass(frozen=True)
class Options:
    """What to measure, and how much of it."""

    configurations: tuple[str, ...]
    workloads: tuple[str, ...]
    quick: bool
    repetitions: int
    workers: int
    concurrency: int
    dispatchers: int
    broker_processes: int
    postgres_url: str
    pgbench: bool
    output_dir: Path

    @property
    def sizes(self) -> WorkloadSizes:
        """Runs per workload."""
        return WorkloadSizes.quick() if self.quick else WorkloadSizes()

    @property
    def idle_seconds(self) -> float:
        """How long one idle-CPU measurement lasts."""
        return 2.0 if self.quick else 10.0

    @property
    def pgbench_seconds(self) -> int:
        """How long one pgbench run lasts."""
        return 3 if self.quick else 10

    def labels(self) -> dict[str, str]:
        """The workload labels used in the table, the JSON and the targets."""
        s = self.sizes
        return {
            "W1": f"W1 single x{s.w1_runs}",
            "W2": f"W2 chain x{s.w2_runs}",
            "W2 scaled": f"W2 chain x{s.w2_runs}, {SCALED_WORKERS} workers",
            "W3": f"W3 diamond x{s.w3_runs}",
            "L1 single": f"L1 single x{s.l1_runs}",
            "L1 chain": f"L1 chain x{s.l1_runs}",
            "idle": f"idle, {IDLE_WORKERS} workers",
            "all": "all workloads",
        }


def settings(options: Options) -> dict[str, Any]:
    """The knobs of this run."""
    sizes = options.sizes
    return {
        "quick": options.quick,
        "configurations": list(options.configurations),
        "workloads": list(options.workloads),
        "repetitions": options.repetitions,
        "workers": options.workers,
        "scaled_workers": SCALED_WORKERS,
        "idle_workers": IDLE_WORKERS,
        "worker_concurrency": options.concurrency,
        "dispatch_threads": options.dispatchers,
        "broker_processes": options.broker_processes,
        "runs": {
            "W1": sizes.w1_runs,
            "W2": sizes.w2_runs,
            "W3": sizes.w3_runs,
            "L1": sizes.l1_runs,
        },
        "idle_seconds": options.idle_seconds,
        "pgbench": {
            "mode": "simple-update (-N)",
            "clients": list(PGBENCH_CLIENTS),
            "seconds": options.pgbench_seconds,
            "scale": PGBENCH_SCALE,
            "ran": options.pgbench and "http-postgresql" in options.configurations,
        },
    }


def parse_args(argv: Sequence[str] | None) -> Options:
    """The command line as :class:`Options`."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="Measure Fuseline's throughput, latency and cost."
    )
    parser.add_argument("--quick", action="store_true", help="shrink every workload (smoke run)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGURATIONS),
        help=f"comma-separated configurations (default: {','.join(CONFIGURATIONS)})",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads (default: {','.join(WORKLOADS)})",
    )
    parser.add_argument("--repetitions", type=int, default=3, help="per figure, at least 3")
    parser.add_argument("--workers", type=int, default=2, help="workers (default: 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="steps per worker at once")
    parser.add_argument("--dispatchers", type=int, default=4, help="client threads dispatching")
    parser.add_argument("--broker-processes", type=int, default=1, help="the server's --processes")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("FUSELINE_BENCH_DATABASE_URL")
        or os.environ.get("FUSELINE_TEST_DATABASE_URL")
        or DEFAULT_POSTGRES,
        help="a PostgreSQL server where the benchmark may create and drop databases "
        "(default: $FUSELINE_BENCH_DATABASE_URL, $FUSELINE_TEST_DATABASE_URL or "
        f"{DEFAULT_POSTGRES})",
    )
    parser.add_argument("--no-pgbench", action="store_true", help="skip the pgbench yardstick")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=ROOT / "bench-results",
        help="where the JSON document is written (default: bench-results/)",
    )
    args = parser.parse_args(argv)
    configurations = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    unknown = [c for c in configurations if c not in CONFIGURATIONS]
    if unknown or not configurations:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGURATIONS)}")
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if not workloads or any(w not in WORKLOADS for w in workloads):
        parser.error(f"--workloads takes a list of {', '.join(WORKLOADS)}")
    if args.repetitions < 3:
        parser.error("each figure is the median of at least 3 repetitions")
    for name in ("workers", "concurrency", "dispatchers", "broker_processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return Options(
        configurations=configurations,
        workloads=workloads,
        quick=args.quick,
        repetitions=args.repetitions,
        workers=args.workers,
        concurrency=args.concurrency,
        dispatchers=args.dispatchers,
        broker_processes=args.broker_processes,
        postgres_url=args.postgres_url,
        pgbench=not args.no_pgbench,
        output_dir=args.output_dir,
    )
