"""The workflows the benchmarks run, and the result each run must end with.

Worker processes import this module by name (``bench_workflows:ALL``), so it
holds nothing but the workflows. Every step is a no-op that returns a small
dict built from what it received: a run only ends with the expected result
when each step's result reached its successors.
"""

from __future__ import annotations

from typing import Any

from fuseline import Depends, Step, Workflow

__all__ = ["ALL", "CHAIN", "DIAMOND", "SINGLE", "expected_result"]

Payload = dict[str, int]


# -- W1 and L1: one step ----------------------------------------------------------------
class Echo(Step):
    """Hands back the run's input."""

    def run_step(self, n: int) -> Payload:
        """Return the input in a dict."""
        return {"n": n}


SINGLE = Workflow(outputs=[Echo(name="echo")], workflow_id="bench-single", version="1")


# -- W2 and L1: a chain A -> B -> C ------------------------------------------------------
class ChainStart(Step):
    """The first link: starts counting hops."""

    def run_step(self, n: int) -> Payload:
        """Start the count at one hop."""
        return {"n": n, "hops": 1}


chain_a = ChainStart(name="a")


class ChainMiddle(Step):
    """The second link: counts one more hop."""

    def run_step(self, previous: Payload = Depends(chain_a)) -> Payload:
        """Add a hop to what the first link returned."""
        return {"n": previous["n"], "hops": previous["hops"] + 1}


chain_b = ChainMiddle(name="b")


class ChainEnd(Step):
    """The last link: counts the third hop."""

    def run_step(self, previous: Payload = Depends(chain_b)) -> Payload:
        """Add a hop to what the second link returned."""
        return {"n": previous["n"], "hops": previous["hops"] + 1}


CHAIN = Workflow(outputs=[ChainEnd(name="c")], workflow_id="bench-chain", version="1")


# -- W3: a diamond A -> (B, C) -> D ------------------------------------------------------
class Fork(Step):
    """The top of the diamond."""

    def run_step(self, n: int) -> Payload:
        """Pass the input on to both branches."""
        return {"n": n}


fork = Fork(name="a")


class Left(Step):
    """One branch of the diamond."""

    def run_step(self, top: Payload = Depends(fork)) -> Payload:
        """Tag the value with this branch's weight."""
        return {"n": top["n"], "weight": 1}


class Right(Step):
    """The other branch of the diamond."""

    def run_step(self, top: Payload = Depends(fork)) -> Payload:
        """Tag the value with this branch's weight."""
        return {"n": top["n"], "weight": 2}


left, right = Left(name="b"), Right(name="c")


class Join(Step):
    """The bottom of the diamond: an AND join of both branches."""

    def run_step(self, one: Payload = Depends(left), two: Payload = Depends(right)) -> Payload:
        """Combine both branches; they must agree on the run's value."""
        if one["n"] != two["n"]:
            raise ValueError(f"the branches saw different runs: {one} and {two}")
        return {"n": one["n"], "weight": one["weight"] + two["weight"]}


DIAMOND = Workflow(outputs=[Join(name="d")], workflow_id="bench-diamond", version="1")

ALL = [SINGLE, CHAIN, DIAMOND]


def expected_result(workflow: Workflow, n: int) -> dict[str, Any]:
    """The result a run of ``workflow`` with input ``n`` must finish with."""
    if workflow is SINGLE:
        return {"echo": {"n": n}}
    if workflow is CHAIN:
        return {"c": {"n": n, "hops": 3}}
    if workflow is DIAMOND:
        return {"d": {"n": n, "weight": 3}}
    raise ValueError(f"not a benchmark workflow: {workflow!r}")
