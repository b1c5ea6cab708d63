"""Where an L1 run's time goes, from timestamps taken in the client, the broker and the workers.

::

    python benchmarks/latency_trace.py [--config http-postgresql] [--quick] [--psycopg]
                                       [--postgres-url URL]

Runs the L1 workload of ``benchmarks/run.py`` (one configuration, no
pgbench) with ``benchmarks/tracing/`` first on ``PYTHONPATH``, so that every
process of the run stamps the hot path's calls on the machine's monotonic
clock (see ``tracing/sitecustomize.py``). Then, for each run the benchmark
dispatched and waited for, it lines up every stamp between the dispatch and
the client holding the result, and prints the most common sequences (one
for single-step runs, one for chains, usually) with the median time of each
stamp since the dispatch and since the stamp before. ``C`` marks the client
(the benchmark), ``B`` the broker, ``W`` a worker.

The tracing itself adds about a tenth to the times. Only the HTTP
configurations are traced: in-process, the client is not an HTTP client.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN = HERE / "run.py"
TRACING = HERE / "tracing"

Stamp = tuple[int, str, str, str]  # nanoseconds, role, label, thread


def read_stamps(prefix: Path) -> list[Stamp]:
    """Every stamp of every traced process, in time order."""
    stamps: list[Stamp] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        lines = path.read_text().splitlines()
        if not lines:
            continue
        command = lines[0]
        role = "C" if "run.py" in command else "B" if "broker" in command else "W"
        for line in lines[1:]:
            ns, label, thread = line.split(" ", 2)
            stamps.append((int(ns), role, label, thread))
    stamps.sort()
    return stamps


def windows(stamps: list[Stamp]) -> list[tuple[int, int]]:
    """(dispatch, result) times of the runs the client started with ``run_workflow``."""
    found = []
    dispatched = None
    for ns, role, label, thread in stamps:
        if role != "C" or thread != "MainThread":
            continue
        if label == "HttpBrokerClient.run_workflow>":
            dispatched = ns
        elif label == "HttpBrokerClient.run_workflow<" and dispatched is not None:
            found.append((dispatched, ns))
            dispatched = None
    return found


def summarise(stamps: list[Stamp], spans: list[tuple[int, int]], shown: int) -> str:
    """The most common sequences of stamps within the spans, with median times."""
    times = [stamp[0] for stamp in stamps]
    sequences: Counter[tuple[tuple[str, str], ...]] = Counter()
    offsets: dict[tuple[tuple[str, str], ...], list[list[int]]] = defaultdict(list)
    for start, end in spans:
        inside = stamps[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]
        key = tuple((role, label) for _, role, label, _ in inside)
        sequences[key] += 1
        offsets[key].append([ns - start for ns, _, _, _ in inside])
    lines = []
    for key, count in sequences.most_common(shown):
        lines.append(f"--- {count} of {len(spans)} runs went this way (ms since the dispatch)")
        before = 0.0
        for index, (role, label) in enumerate(key):
            at = statistics.median(row[index] for row in offsets[key]) / 1e6
            lines.append(f"{at:8.3f}  +{at - before:6.3f}  {role} {label}")
            before = at
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the traced workload and print where its time went; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    configs = ["http-postgresql", "http-sqlite"]
    parser.add_argument("--config", default=configs[0], choices=configs)
    parser.add_argument("--quick", action="store_true", help="20 runs of each kind instead of 200")
    parser.add_argument("--postgres-url", help="as for benchmarks/run.py")
    parser.add_argument("--shown", type=int, default=2, help="how many sequences to print")
    parser.add_argument(
        "--psycopg", action="store_true", help="stamp psycopg's statements, BEGIN and COMMIT too"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuseline-trace-") as folder:
        prefix = Path(folder) / "trace"
        command = [sys.executable, str(RUN), "--configs", args.config, "--workloads", "L1"]
        command += ["--no-pgbench", "--output-dir", folder]
        if args.quick:
            command.append("--quick")
        if args.postgres_url:
            command += ["--postgres-url", args.postgres_url]
        env = dict(os.environ, BENCH_TRACE=str(prefix))
        if args.psycopg:
            env["BENCH_TRACE_PSYCOPG"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRACING), env.get("PYTHONPATH")]))
        done = subprocess.run(  # noqa: S603 - our own interpreter and script
            command, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        stamps = read_stamps(prefix)
    spans = windows(stamps)
    if not spans:
        print("no traced runs found (is the configuration an HTTP one?)", file=sys.stderr)
        return 1
    print(summarise(stamps, spans, args.shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
