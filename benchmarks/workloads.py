"""The workloads W1, W2, W3 and L1: one repetition each, timed, then verified.

Throughput workloads dispatch every run as fast as the client can (one call
per run, from a few client threads) while the workers are already waiting,
and time from just before the first dispatch to the moment the last run
finished. That moment is the run's ``finished_at`` as the broker stored it
(the same machine's clock), so detecting the end by polling adds nothing to
the figure. Every run's final result is read and checked only after timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench_workflows import CHAIN, DIAMOND, SINGLE, expected_result

from fuseline import RunDetails, Status, Workflow
from fuseline.clients import BrokerClient

__all__ = [
    "LatencyResult",
    "ThroughputResult",
    "WorkloadSizes",
    "direct_throughput",
    "latency",
    "percentile",
    "throughput",
]

_UNFINISHED = (Status.PENDING, Status.RUNNING)


@dataclass(frozen=True)
class WorkloadSizes:
    """How many runs each workload dispatches."""

    w1_runs: int = 2000
    w2_runs: int = 300
    w3_runs: int = 200
    l1_runs: int = 200

    @classmethod
    def quick(cls) -> WorkloadSizes:
        """Small sizes for smoke runs: seconds instead of minutes."""
        return cls(w1_runs=100, w2_runs=30, w3_runs=20, l1_runs=20)


THROUGHPUT_WORKFLOWS = {"W1": SINGLE, "W2": CHAIN, "W3": DIAMOND}


@dataclass(frozen=True)
class ThroughputResult:
    """One repetition of a throughput workload.

    Attributes:
        runs: Runs dispatched and finished.
        steps: Steps in those runs.
        seconds: From just before the first dispatch to the last run's end.
        dispatch_seconds: How long dispatching every run took.
        cpu_seconds: CPU time each group of processes used from the first
            dispatch until the end was noticed (verification not included).
    """

    runs: int
    steps: int
    seconds: float
    dispatch_seconds: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def runs_per_second(self) -> float:
        """Runs finished per second."""
        return self.runs / self.seconds

    @property
    def steps_per_second(self) -> float:
        """Steps finished per second."""
        return self.steps / self.seconds


@dataclass(frozen=True)
class LatencyResult:
    """One repetition of a latency workload, in milliseconds.

    Attributes:
        milliseconds: Each run's time from dispatch to the client having its result.
        to_first_claim: From sending the dispatch to a worker claiming the first step.
        in_steps: From the first claim to the report that finished the run.
        to_client: From the run finishing (broker clock) to the client having it.
    """

    milliseconds: list[float]
    to_first_claim: list[float] = field(default_factory=list)
    in_steps: list[float] = field(default_factory=list)
    to_client: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) of the end-to-end latencies."""
        return percentile(self.milliseconds, p)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values``, interpolated between the nearest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _verify(workflow: Workflow, n: int, run: RunDetails) -> None:
    expected = expected_result(workflow, n)
    if run.status is not Status.SUCCEEDED or run.result != expected:
        errors = {name: s.error for name, s in run.steps.items() if s.error is not None}
        raise AssertionError(
            f"run {run.run_id} of {workflow.workflow_id} (n={n}) ended {run.status.value} "
            f"with {run.result!r}, expected {expected!r}; step errors: {errors}"
        )


def _wait_until_finished(client: BrokerClient, workflow_id: str, timeout: float) -> None:
    """Return once no run of ``workflow_id`` is pending or running (earlier ones are done)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = any(
            client.list_runs(workflow_id=workflow_id, status=status, limit=1).items
            for status in _UNFINISHED
        )
        if not busy:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs of {workflow_id} were still unfinished after {timeout:g} s")
        time.sleep(0.05)


def throughput(
    client: BrokerClient,
    workflow: Workflow,
    runs: int,
    *,
    dispatchers: int,
    timeout: float,
    first_input: int = 0,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> ThroughputResult:
    """Dispatch ``runs`` runs of ``workflow``, wait for all of them, verify them.

    Args:
        client: Where to dispatch.
        workflow: One of the benchmark workflows.
        runs: How many runs.
        dispatchers: Client threads dispatching at once (one run per call).
        timeout: Seconds the whole repetition may take.
        first_input: The input ``n`` of the first run; the others count up, so
            that every run's result is distinct.
        cpu: Returns CPU seconds used so far per group of processes; read
            before the first dispatch and once the end is noticed.
    """
    schema = workflow.to_schema()
    inputs = range(first_input, first_input + runs)

    def dispatch(n: int) -> str:
        return client.dispatch_workflow(schema, {"n": n})

    cpu_before = cpu() if cpu else {}
    started = time.time()
    with ThreadPoolExecutor(dispatchers, thread_name_prefix="bench-dispatch") as pool:
        run_ids = list(pool.map(dispatch, inputs))
    dispatched = time.time()
    _wait_until_finished(client, schema.workflow_id, timeout)
    cpu_after = cpu() if cpu else {}
    used = {group: cpu_after[group] - cpu_before.get(group, 0.0) for group in cpu_after}
    finished = 0.0
    for n, run_id in zip(inputs, run_ids, strict=True):
        run = client.get_run(run_id)
        _verify(workflow, n, run)
        if run.finished_at is not None:
            finished = max(finished, run.finished_at.timestamp())
    return ThroughputResult(
        runs=runs,
        steps=runs * len(schema.steps),
        seconds=finished - started,
        dispatch_seconds=dispatched - started,
        cpu_seconds=used,
    )


def latency(
    client: BrokerClient, workflow: Workflow, runs: int, *, timeout: float, first_input: int = 0
) -> LatencyResult:
    """Run ``runs`` runs one after the other (dispatch, wait, next); time each one.

    Besides the end-to-end time, each run's time is split by the broker's own
    timestamps (the same machine's clock) into: waiting for a worker to claim
    the first step, running the steps, and the finished run reaching the client.

    Args:
        client: Where to dispatch.
        workflow: One of the benchmark workflows.
        runs: How many runs.
        timeout: Seconds one run may take.
        first_input: The input ``n`` of the first run.
    """
    schema = workflow.to_schema()
    result = LatencyResult([])
    finished: list[tuple[int, RunDetails]] = []
    for n in range(first_input, first_input + runs):
        sent = time.time()
        started = time.perf_counter()
        run = client.run_workflow(schema, {"n": n}, timeout=timeout)
        result.milliseconds.append((time.perf_counter() - started) * 1000)
        received = time.time()
        finished.append((n, run))
        claims = [s.started_at.timestamp() for s in run.steps.values() if s.started_at]
        ends = [s.finished_at.timestamp() for s in run.steps.values() if s.finished_at]
        if claims and ends and run.finished_at is not None:
            result.to_first_claim.append((min(claims) - sent) * 1000)
            result.in_steps.append((max(ends) - min(claims)) * 1000)
            result.to_client.append((received - run.finished_at.timestamp()) * 1000)
    for n, run in finished:
        _verify(workflow, n, run)
    return result


def direct_throughput(workflow: Workflow, runs: int, *, first_input: int = 0) -> ThroughputResult:
    """Run ``runs`` runs with ``Workflow.run()``, one after the other: no broker at all.

    This is the floor under every configuration: what executing the steps
    (binding, policies, validation) costs in this process.
    """
    schema = workflow.to_schema()
    started = time.perf_counter()
    outcomes = [(n, workflow.run({"n": n})) for n in range(first_input, first_input + runs)]
    seconds = time.perf_counter() - started
    for n, outcome in outcomes:
        expected = expected_result(workflow, n)
        if outcome.status is not Status.SUCCEEDED or outcome.result != expected:
            raise AssertionError(
                f"Workflow.run() of {workflow.workflow_id} gave {outcome.result!r}"
            )
    return ThroughputResult(
        runs=runs, steps=runs * len(schema.steps), seconds=seconds, dispatch_seconds=0.0
    )
