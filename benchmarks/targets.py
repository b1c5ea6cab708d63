"""The targets of the benchmark issue, checked against a report.

They are benchmark figures for a 2-core machine, never test assertions: a
missed target is printed and recorded, and the run still succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from report import Report

__all__ = ["Target", "evaluate"]

PG = "http-postgresql"


@dataclass(frozen=True)
class Target:
    """A figure and the bound it should meet.

    Attributes:
        name: What the target says, in words.
        configuration: The figure's configuration.
        workload: The figure's workload label.
        metric: The figure's metric.
        bound: The bound, in the metric's unit or as a share of pgbench TPS.
        at_least: True for a lower bound, False for an upper bound.
        share_of_pgbench: The bound is this share of pgbench TPS with 8 clients.
    """

    name: str
    configuration: str
    workload: str
    metric: str
    bound: float
    at_least: bool = True
    share_of_pgbench: bool = False

    def check(self, report: Report) -> dict[str, Any]:
        """Whether ``report`` meets this target (None when not measured)."""
        measured = report.find(self.configuration, self.workload, self.metric)
        bound = self.bound
        if self.share_of_pgbench:
            tps = report.pgbench_medians().get(8)
            bound = self.bound * tps if tps else float("nan")
        met: bool | None = None
        if measured is not None and bound == bound:  # NaN when pgbench did not run
            met = measured >= bound if self.at_least else measured <= bound
        return {
            "target": self.name,
            "configuration": self.configuration,
            "workload": self.workload,
            "metric": self.metric,
            "bound": None if bound != bound else bound,
            "measured": measured,
            "met": met,
        }


def _targets(labels: dict[str, str]) -> list[Target]:
    w1, w2, w3 = labels["W1"], labels["W2"], labels["W3"]
    single, chain, idle = labels["L1 single"], labels["L1 chain"], labels["idle"]
    return [
        Target("W2 >= 0.5 x pgbench TPS (8 clients)", PG, w2, "steps/s", 0.5, True, True),
        Target("W3 >= 0.5 x pgbench TPS (8 clients)", PG, w3, "steps/s", 0.5, True, True),
        Target("W1 >= 0.3 x pgbench TPS (8 clients)", PG, w1, "steps/s", 0.3, True, True),
        Target("L1 single step p50 <= 4 ms", PG, single, "p50", 4.0, at_least=False),
        Target("L1 3-step chain p50 <= 12 ms", PG, chain, "p50", 12.0, at_least=False),
        Target("in-process W1 >= 20,000 steps/s", "in-process", w1, "steps/s", 20_000),
        Target("in-process W2 >= 20,000 steps/s", "in-process", w2, "steps/s", 20_000),
        Target("in-process W3 >= 20,000 steps/s", "in-process", w3, "steps/s", 20_000),
        Target("broker idle CPU < 2% (SQLite)", "http-sqlite", idle, "broker CPU", 2.0, False),
        Target("broker idle CPU < 2% (PostgreSQL)", PG, idle, "broker CPU", 2.0, False),
    ]


def evaluate(report: Report, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Every target with its bound, the measured median and whether it was met."""
    return [target.check(report) for target in _targets(labels)]
