"""Workflows that the worker process tests run in real ``fuseline.worker`` processes.

Every step writes one line to a ledger before it does anything else: a file
per worker process (``$FUSELINE_TEST_LEDGER/<pid>.log``) opened in append
mode. The tests count executions from these files, not from the broker, so a
step that ran twice is caught even if the broker kept only one result.

Every workflow takes a ``key`` input that is unique per run, so ledger lines
say which run a step belonged to.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from fuseline import AsyncStep, Depends, Step, Workflow
from fuseline.policies import RetryPolicy, StepTimeoutPolicy

LEDGER_VARIABLE = "FUSELINE_TEST_LEDGER"


def record(key: str, step: str) -> None:
    """Note in this process's ledger that ``step`` of run ``key`` started."""
    folder = Path(os.environ[LEDGER_VARIABLE])
    with (folder / f"{os.getpid()}.log").open("a", encoding="utf-8") as ledger:
        ledger.write(f"{key} {step}\n")


def executions(folder: Path) -> list[tuple[str, str, int]]:
    """Every ledger line of every worker: (run key, step name, worker pid)."""
    found: list[tuple[str, str, int]] = []
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, step = line.split(" ", 1)
            found.append((key, step, int(path.stem)))
    return found


def tries(key: str, step: str) -> int:
    """How often this process has started ``step`` of run ``key`` (ledger included)."""
    path = Path(os.environ[LEDGER_VARIABLE]) / f"{os.getpid()}.log"
    if not path.exists():
        return 0
    return path.read_text(encoding="utf-8").splitlines().count(f"{key} {step}")


# -- a chain: Start -> Add -> Square ------------------------------------------------


class Start(Step):
    def run_step(self, key: str, x: int) -> int:
        record(key, "Start")
        return x


class Add(Step):
    def run_step(self, value: int, key: str) -> int:
        record(key, "Add")
        return value + 1


class Square(Step):
    def run_step(self, value: int, key: str) -> dict[str, int]:
        record(key, "Square")
        return {"value": value * value, "pid": os.getpid()}


start, add, square = Start(), Add(), Square()
start >> add >> square
chain = Workflow(outputs=[square], workflow_id="chain")


# -- fan-out and fan-in: Split -> Part_0..3 -> Gather ---------------------------------


class Split(Step):
    def run_step(self, key: str, size: int) -> list[int]:
        record(key, "Split")
        return list(range(size))


split = Split()


class Part(Step):
    def __init__(self, index: int) -> None:
        super().__init__(name=f"part_{index}")
        self.index = index

    def run_step(self, numbers: list[int], key: str) -> int:
        record(key, self.name)
        time.sleep(0.05)  # long enough for several workers to share one run
        return sum(n * (self.index + 1) for n in numbers)


parts = [Part(i) for i in range(4)]


class Gather(Step):
    def run_step(
        self,
        key: str,
        a: int = Depends(parts[0]),
        b: int = Depends(parts[1]),
        c: int = Depends(parts[2]),
        d: int = Depends(parts[3]),
    ) -> int:
        record(key, "Gather")
        return a + b + c + d


for part in parts:
    split >> part
fan = Workflow(outputs=[Gather()], workflow_id="fan")


# -- branching with a retry and a timeout ----------------------------------------------


class Decide(Step):
    def run_step(self, key: str, amount: int) -> str:
        record(key, "Decide")
        return "big" if amount >= 100 else "small"


decide = Decide()


class Big(Step):
    def run_step(self, key: str, amount: int) -> str:
        record(key, "Big")
        if tries(key, "Big") == 1:
            raise ConnectionError("flaky on the first try")
        return f"big {amount}"


class Small(Step):
    def run_step(self, key: str, amount: int) -> str:
        record(key, "Small")
        return f"small {amount}"


big = Big(policies=[RetryPolicy(max_retries=2, wait=0.05)])
small = Small()
(decide - "big") >> big
(decide - "small") >> small


class Report(Step):
    def run_step(self, key: str, outcome: str = Depends(big, small)) -> str:
        record(key, "Report")
        return f"report: {outcome}"


branching = Workflow(outputs=[Report()], workflow_id="branching")


class Hang(Step):
    def run_step(self, key: str) -> None:
        record(key, "Hang")
        time.sleep(5)


timeout = Workflow(outputs=[Hang(policies=[StepTimeoutPolicy(0.5)])], workflow_id="timeout")


# -- async steps ---------------------------------------------------------------------------


class Fetch(AsyncStep):
    async def run_step(self, key: str, n: int) -> int:
        record(key, "Fetch")
        await asyncio.sleep(0.05)
        return n * 10


class Combine(AsyncStep):
    async def run_step(self, value: int, key: str) -> int:
        record(key, "Combine")
        await asyncio.sleep(0.05)
        return value + 1


fetch = Fetch()
fetch >> Combine()
asynchronous = Workflow(outputs=[fetch.successors[0]], workflow_id="async")


# -- one long step, for the crash tests ----------------------------------------------------


class Long(Step):
    """Runs for ``seconds`` (keep it under 3: that is also its timeout, and so its lease)."""

    def run_step(self, key: str, seconds: float) -> dict[str, int]:
        record(key, "Long")
        time.sleep(seconds)
        return {"pid": os.getpid()}


long = Workflow(
    outputs=[Long(policies=[StepTimeoutPolicy(3.0), RetryPolicy(max_retries=3)])],
    workflow_id="long",
)

# The same step with a lease long enough to outlast a broker restart.
steady = Workflow(
    outputs=[Long(policies=[StepTimeoutPolicy(20.0), RetryPolicy(max_retries=3)])],
    workflow_id="steady",
)

everything = [chain, fan, branching, timeout, asynchronous, long, steady]
