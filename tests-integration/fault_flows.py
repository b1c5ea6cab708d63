"""Workflows run by the fault suite's worker processes (``python -m fuseline.worker``).

Every step body goes through :func:`executing`, which appends a JSON line to
a ledger file of its own process (``$FUSELINE_TEST_LEDGER/<pid>.jsonl``,
opened in append mode) when it starts and another when it ends. Each
execution gets a fresh id that the step puts in its result, and records the
ids of the parent results it was given. From those lines alone the checker
in ``fault_harness.py`` can tell how often each step really ran, which
execution's result the broker accepted, and whether a successor ever saw a
result other than the accepted one.

The step body cannot see the broker's attempt number; the checker takes it
from the workers' logs, which name the attempt of every step they start.

Each workflow takes a ``key`` input, unique per run, that ledger lines carry.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuseline import Depends, Step, Workflow
from fuseline.policies import RetryPolicy, StepTimeoutPolicy

LEDGER_VARIABLE = "FUSELINE_TEST_LEDGER"  # the name worker_flows.py and its launcher use

# Leases come from the steps' timeouts. Three seconds keeps a killed worker's
# steps waiting briefly, while heartbeats (three per lease) keep a busy
# worker's leases alive on a loaded two-core machine.
SHORT_LEASE = 3.0
# Long enough to outlast a broker restart with no heartbeat getting through.
PATIENT_LEASE = 20.0
# Hand-outs allowed per step in the chaos workflows: plenty, so that a step
# hit by several worker kills in a row still finishes.
CHAOS_ATTEMPTS = 6
PART_SECONDS = 0.03


class Execution:
    """One execution of a step body, written to the ledger when it starts and ends."""

    def __init__(self, key: str, step: str, parents: dict[str, Any]) -> None:
        self.key = key
        self.step = step
        self.exec_id = uuid.uuid4().hex[:16]
        self.parents = {name: _exec_of(value) for name, value in parents.items()}

    def write(self, event: str) -> None:
        line = {
            "event": event,
            "run": self.key,
            "step": self.step,
            "exec": self.exec_id,
            "pid": os.getpid(),
            "at": time.time(),
            "parents": self.parents,
        }
        folder = Path(os.environ[LEDGER_VARIABLE])
        # One write of one short line to a file opened for appending: lines of
        # concurrent threads never interleave, and nothing is overwritten.
        with (folder / f"{os.getpid()}.jsonl").open("a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(line, separators=(",", ":")) + "\n")

    def result(self, value: Any) -> dict[str, Any]:
        return {"exec": self.exec_id, "value": value, "pid": os.getpid()}


def _exec_of(value: Any) -> str | None:
    return value.get("exec") if isinstance(value, dict) else None


@contextlib.contextmanager
def executing(key: str, step: str, **parents: Any) -> Iterator[Execution]:
    """Write the start line, run the body, write the end line (unless the body raised)."""
    execution = Execution(key, step, parents)
    execution.write("start")
    yield execution
    execution.write("end")


def chaos_policies(lease: float) -> list[Any]:
    return [StepTimeoutPolicy(lease), RetryPolicy(max_retries=CHAOS_ATTEMPTS - 1)]


# -- fan-out and fan-in: split -> part_0..part_3 -> gather ---------------------------------


class Split(Step):
    def run_step(self, key: str, size: int) -> dict[str, Any]:
        with executing(key, self.name) as run:
            return run.result(list(range(size)))


class Part(Step):
    def __init__(self, index: int, lease: float) -> None:
        super().__init__(name=f"part_{index}", policies=chaos_policies(lease))
        self.index = index

    def run_step(self, numbers: dict[str, Any], key: str) -> dict[str, Any]:
        with executing(key, self.name, split=numbers) as run:
            time.sleep(PART_SECONDS)
            return run.result(sum(n * (self.index + 1) for n in numbers["value"]))


def fan_workflow(workflow_id: str, lease: float) -> Workflow:
    split = Split(name="split", policies=chaos_policies(lease))
    parts = [Part(i, lease) for i in range(4)]
    for part in parts:
        split >> part

    class Gather(Step):
        def run_step(
            self,
            key: str,
            a: dict[str, Any] = Depends(parts[0]),
            b: dict[str, Any] = Depends(parts[1]),
            c: dict[str, Any] = Depends(parts[2]),
            d: dict[str, Any] = Depends(parts[3]),
        ) -> dict[str, Any]:
            parents = {"part_0": a, "part_1": b, "part_2": c, "part_3": d}
            with executing(key, self.name, **parents) as run:
                return run.result(sum(p["value"] for p in parents.values()))

    gather = Gather(name="gather", policies=chaos_policies(lease))
    return Workflow(outputs=[gather], workflow_id=workflow_id)


def fan_total(size: int) -> int:
    """The result of ``gather`` for a run with input ``size``."""
    return sum(range(size)) * (1 + 2 + 3 + 4)


fan = fan_workflow("fault-fan", SHORT_LEASE)
fan_patient = fan_workflow("fault-fan-patient", PATIENT_LEASE)


# -- three parents that finish together, and their AND join ------------------------------

BARRIER_SECONDS = 1.0


class Root(Step):
    def run_step(self, key: str) -> dict[str, Any]:
        with executing(key, self.name) as run:
            return run.result(key)


class Parent(Step):
    """Waits (briefly) for its two siblings to start, so that all three report together."""

    def run_step(self, root: dict[str, Any], key: str) -> dict[str, Any]:
        with executing(key, self.name, root=root) as run:
            folder = Path(os.environ[LEDGER_VARIABLE]).parent / "barrier" / key
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.name).touch()
            until = time.monotonic() + BARRIER_SECONDS
            while len(os.listdir(folder)) < 3 and time.monotonic() < until:
                time.sleep(0.002)
            return run.result(self.name)


root = Root(name="root", policies=chaos_policies(SHORT_LEASE))
trio_parents = [Parent(name=f"parent_{i}", policies=chaos_policies(SHORT_LEASE)) for i in range(3)]
for parent in trio_parents:
    root >> parent


class Join3(Step):
    def run_step(
        self,
        key: str,
        x: dict[str, Any] = Depends(trio_parents[0]),
        y: dict[str, Any] = Depends(trio_parents[1]),
        z: dict[str, Any] = Depends(trio_parents[2]),
    ) -> dict[str, Any]:
        parents = {"parent_0": x, "parent_1": y, "parent_2": z}
        with executing(key, self.name, **parents) as run:
            return run.result(sorted(p["value"] for p in parents.values()))


trio = Workflow(
    outputs=[Join3(name="join", policies=chaos_policies(SHORT_LEASE))], workflow_id="fault-trio"
)


# -- a step that kills its own worker ---------------------------------------------------------

POISON_ATTEMPTS = 3
POISON_LEASE = 1.5


class Poison(Step):
    def run_step(self, key: str) -> None:
        with executing(key, self.name):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # never reached: the signal ends the process first


poison = Workflow(
    outputs=[
        Poison(
            name="poison",
            policies=[
                StepTimeoutPolicy(POISON_LEASE),
                RetryPolicy(max_retries=POISON_ATTEMPTS - 1),
            ],
        )
    ],
    workflow_id="fault-poison",
)


# -- steps that overrun their timeout ----------------------------------------------------------

# Also the lease: two seconds leave heartbeats room on a busy machine.
OVERRUN_TIMEOUT = 2.0
OVERRUN_TRIES = 3  # in-process tries on the worker: RetryPolicy(max_retries=2)
OVERRUN_SECONDS = 4.5


def _tries_here(key: str, step: str) -> int:
    """How many executions of ``step`` of run ``key`` this process has started."""
    path = Path(os.environ[LEDGER_VARIABLE]) / f"{os.getpid()}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return sum(
        1
        for line in lines
        if (entry := json.loads(line))["event"] == "start"
        and entry["run"] == key
        and entry["step"] == step
    )


class Overrun(Step):
    """Always sleeps past its timeout; with ``recover`` only on its first try."""

    def run_step(self, key: str, recover: bool) -> dict[str, Any]:
        first = _tries_here(key, self.name) == 0
        with executing(key, self.name) as run:
            if first or not recover:
                time.sleep(OVERRUN_SECONDS)
            return run.result("finished")


overrun = Workflow(
    outputs=[
        Overrun(
            name="overrun",
            # RetryPolicy always wraps the others: every try gets its own deadline.
            policies=[
                RetryPolicy(max_retries=OVERRUN_TRIES - 1),
                StepTimeoutPolicy(OVERRUN_TIMEOUT),
            ],
        )
    ],
    workflow_id="fault-overrun",
)


class Quick(Step):
    """A step with a one-second lease for hand-written workers that never heartbeat."""

    def run_step(self, key: str) -> dict[str, Any]:
        with executing(key, self.name) as run:
            return run.result("quick")


quick = Workflow(
    outputs=[Quick(name="quick", policies=[StepTimeoutPolicy(1.0), RetryPolicy(max_retries=2)])],
    workflow_id="fault-quick",
)


# -- one long step whose lease must outlast broker restarts -------------------------------------


class Long(Step):
    def run_step(self, key: str, seconds: float) -> dict[str, Any]:
        with executing(key, self.name) as run:
            time.sleep(seconds)
            return run.result(seconds)


long = Workflow(
    outputs=[Long(name="long", policies=chaos_policies(PATIENT_LEASE))], workflow_id="fault-long"
)

everything = [fan, fan_patient, trio, poison, overrun, quick, long]
