"""The fault suite's checker: what the ledgers, the logs and the broker say, compared.

Worker processes running ``fault_flows.py`` write every execution of a step
body to ledger files; their logs name the attempt of every step they start;
the broker tells each run's final state through ``client.get_run()``.
:func:`check` compares the three and returns :class:`Figures`, which it also
writes as JSON to ``test-results/fault/`` with a one-line summary.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fault_flows as flows

from fuseline import RunDetails, Status

if TYPE_CHECKING:
    from fault_harness import FaultCluster
    from worker_processes import WorkerProcess

__all__ = [
    "RESULTS",
    "Execution",
    "Figures",
    "assert_sound",
    "check",
    "expect_fan",
    "first_progress_after",
    "read_handouts",
    "read_ledger",
    "write_figures",
]

RESULTS = Path(__file__).resolve().parent.parent / "test-results" / "fault"
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
SCHEMAS = {wf.workflow_id: wf.to_schema() for wf in flows.everything}


# -- what the ledgers and logs say ------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One execution of a step body, as its ledger lines tell it."""

    key: str
    step: str
    exec_id: str
    pid: int
    started: float
    ended: float | None
    parents: dict[str, str | None]


def read_ledger(folder: Path) -> list[Execution]:
    """Every execution any worker wrote to its ledger under ``folder``, oldest first."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, float] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a worker killed while writing it
            if entry["event"] == "start":
                starts[entry["exec"]] = entry
            else:
                ends[entry["exec"]] = entry["at"]
    found = [
        Execution(
            key=entry["run"],
            step=entry["step"],
            exec_id=exec_id,
            pid=entry["pid"],
            started=entry["at"],
            ended=ends.get(exec_id),
            parents=entry["parents"],
        )
        for exec_id, entry in starts.items()
    ]
    return sorted(found, key=lambda e: e.started)


_STARTED = re.compile(
    r"step '(?P<step>[^']+)' of run (?P<run>\S+) \(attempt (?P<attempt>\d+)\): started"
)


def read_handouts(workers: list[WorkerProcess]) -> dict[tuple[str, str, int], list[str]]:
    """(run id, step, attempt) -> names of the workers whose logs say they started it."""
    handouts: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for worker in workers:
        for match in _STARTED.finditer(worker.log()):
            handouts[(match["run"], match["step"], int(match["attempt"]))].append(worker.name)
    return handouts


# -- the checker --------------------------------------------------------------------------


@dataclass
class Figures:
    """What a fault test measured; written as JSON to ``test-results/fault/``."""

    test: str
    backend: str
    runs: int = 0
    terminal: int = 0
    succeeded: int = 0
    failed: int = 0
    steps_accepted: int = 0
    executions: int = 0
    duplicates: int = 0
    lost: int = 0
    kills: int = 0
    crashes: int = 0
    crash_executions: int = 0
    recovery_seconds: float | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f}s"
        return (
            f"[fault] {self.test} ({self.backend}): {self.runs} runs, "
            f"{self.terminal} terminal, {self.executions} executions, "
            f"{self.duplicates} duplicates, {self.lost} lost, {self.kills} kills, "
            f"{self.crashes} crashed workers, "
            f"recovery {recovery}, {self.seconds:.1f}s"
            + ("" if not self.problems else f", {len(self.problems)} PROBLEMS")
        )


def _stamp(value: Any) -> float | None:
    return None if value is None else value.timestamp()


def check(
    fc: FaultCluster,
    details: dict[str, RunDetails],
    test: str,
    *,
    expect: Callable[[str, RunDetails], str | None] | None = None,
    retrying_steps: frozenset[str] = frozenset(),
    recovery: float | None = None,
    extra: dict[str, Any] | None = None,
    write: bool = True,
) -> Figures:
    """Check every run against the ledgers and the logs; write and return the figures.

    What must hold (each breach is listed in ``Figures.problems``, and the
    test then fails):

    * every run is terminal (otherwise it counts as lost), and ``expect``
      returns no complaint about it;
    * the accepted result of each step comes from an execution in the ledger,
      on the worker the broker says held the lease;
    * every execution of a step saw exactly the accepted results of its parents
      (so no result was ever replaced, and no successor ran early);
    * an execution whose result was not accepted happened on a worker that
      crashed: executions minus crash losses equal accepted steps;
    * no (run, step, attempt) was started by two workers, attempts stay
      within each step's limit, and a step ran at most once per hand-out.

    ``retrying_steps`` names steps that retry in-process on the worker, so
    that one hand-out runs their body several times.
    """
    crashed = fc.crashed_pids()
    executions = read_ledger(fc.ledger)
    by_step: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for execution in executions:
        by_step[(execution.key, execution.step)].append(execution)
    handouts = read_handouts(fc.workers)
    pids = fc.worker_pids()
    problems: list[str] = []
    accepted_ids: set[str] = set()
    accepted_at: dict[tuple[str, str], float] = {}
    lost = succeeded = failed = steps_accepted = 0

    for key, run in details.items():
        if run.status not in TERMINAL:
            lost += 1
            problems.append(f"run {key} ({run.run_id}) is still {run.status.value}")
            continue
        succeeded += run.status is Status.SUCCEEDED
        failed += run.status is Status.FAILED
        if expect is not None and (complaint := expect(key, run)):
            problems.append(f"run {key}: {complaint}")
        limits = {s.name: s.max_attempts for s in SCHEMAS[run.workflow_id].steps}
        accepted: dict[str, str] = {}
        for name, record in run.steps.items():
            if record.attempts > limits[name]:
                problems.append(
                    f"{key}/{name}: {record.attempts} attempts, over its limit {limits[name]}"
                )
            if record.status is Status.SUCCEEDED and isinstance(record.result, dict):
                exec_id = record.result["exec"]
                accepted[name] = exec_id
                accepted_ids.add(exec_id)
                steps_accepted += 1
                if record.finished_at is not None:
                    accepted_at[(key, name)] = record.finished_at.timestamp()
                mine = {e.exec_id: e for e in by_step[(key, name)]}
                if exec_id not in mine:
                    problems.append(f"{key}/{name}: accepted {exec_id}, which no ledger shows")
                elif record.worker_id in pids and pids[record.worker_id] != mine[exec_id].pid:
                    problems.append(
                        f"{key}/{name}: accepted from pid {mine[exec_id].pid} but the broker "
                        f"says worker pid {pids[record.worker_id]} held the lease"
                    )
            ran = len(by_step[(key, name)])
            if name not in retrying_steps and ran > max(record.attempts, 1):
                problems.append(f"{key}/{name}: ran {ran} times in {record.attempts} hand-outs")
        for name in run.steps:
            for execution in by_step[(key, name)]:
                for parent, seen in execution.parents.items():
                    if seen != accepted.get(parent):
                        problems.append(
                            f"{key}/{name}: execution {execution.exec_id} saw {parent} result "
                            f"{seen}, but the accepted one is {accepted.get(parent)}"
                        )

    duplicates = crash_executions = 0
    known_keys = set(details)
    for (key, name), found in by_step.items():
        if key not in known_keys:
            continue
        duplicates += max(0, len(found) - 1)
        for execution in found:
            if execution.exec_id in accepted_ids:
                continue
            if execution.pid in crashed:
                crash_executions += 1
            elif name not in retrying_steps:
                problems.append(
                    f"{key}/{name}: execution {execution.exec_id} on pid {execution.pid}, a "
                    "worker that never crashed, was not accepted (a second hand-out?)"
                )

    run_ids = {run.run_id: run for run in details.values()}
    for (run_id, name, attempt), names in handouts.items():
        if run_id not in run_ids:
            continue
        if len(names) > 1:
            problems.append(f"{run_id}/{name} attempt {attempt} was started by {names}")
        limit = next(
            s.max_attempts for s in SCHEMAS[run_ids[run_id].workflow_id].steps if s.name == name
        )
        if attempt > limit:
            problems.append(f"{run_id}/{name} was handed out as attempt {attempt} > {limit}")

    if recovery is None and fc.faults:
        recovery = first_progress_after(details, [f.ended for f in fc.faults])
    if recovery is None and fc.kills:
        # How long the steps a killed worker held took to be accepted elsewhere.
        waits = [
            accepted_at[(e.key, e.step)] - kill.at
            for kill in fc.kills
            for e in executions
            if e.pid == kill.pid
            and e.exec_id not in accepted_ids
            and (e.key, e.step) in accepted_at
        ]
        recovery = max(waits, default=None)

    if fc.faults:
        extra = {
            "faults": [
                {
                    "fault": f.label,
                    "at": round(f.began - fc.began_epoch, 2),
                    "seconds": round(f.ended - f.began, 2),
                }
                for f in fc.faults
            ],
            **(extra or {}),
        }
    figures = Figures(
        test=test,
        backend=fc.backend,
        runs=len(details),
        terminal=len(details) - lost,
        succeeded=succeeded,
        failed=failed,
        steps_accepted=steps_accepted,
        executions=sum(len(v) for (k, _), v in by_step.items() if k in known_keys),
        duplicates=duplicates,
        lost=lost,
        kills=len(fc.kills),
        crashes=len(crashed),
        crash_executions=crash_executions,
        recovery_seconds=None if recovery is None else round(recovery, 3),
        seconds=round(fc.seconds(), 2),
        problems=problems[:50],
        extra=dict(extra or {}),
    )
    if write:
        write_figures(figures)
    return figures


def expect_fan(key: str, run: RunDetails) -> str | None:
    """What is wrong with a finished run of a ``fan`` workflow, if anything."""
    if run.status is not Status.SUCCEEDED:
        return f"ended {run.status.value}"
    got = (run.result or {}).get("gather", {}).get("value")
    want = flows.fan_total(run.inputs["size"])
    return None if got == want else f"gather gave {got}, expected {want}"


def first_progress_after(details: dict[str, RunDetails], moments: list[float]) -> float | None:
    """The longest wait, over ``moments`` (ends of faults), until the broker next accepted a step.

    Moments after which no step was accepted at all (the work was done) do not count.
    """
    finished = sorted(
        stamp
        for run in details.values()
        for record in run.steps.values()
        if (stamp := _stamp(record.finished_at)) is not None
    )
    waits = []
    for moment in moments:
        later = [stamp for stamp in finished if stamp > moment]
        if later:
            waits.append(later[0] - moment)
    return max(waits, default=None)


def write_figures(figures: Figures) -> Path:
    """Write ``figures`` to ``test-results/fault/<test>-<backend>.json`` and print a summary."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{figures.test}-{figures.backend}.json"
    path.write_text(json.dumps(dataclasses.asdict(figures), indent=2) + "\n", encoding="utf-8")
    print(figures.summary())
    return path


def assert_sound(figures: Figures) -> None:
    """Fail the test with every problem the checker found."""
    assert not figures.problems, figures.summary() + "\n" + "\n".join(figures.problems)
    assert figures.lost == 0, figures.summary()
