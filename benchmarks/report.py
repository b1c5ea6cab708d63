"""Turning repetitions into figures: median, min and max, a table and one JSON document."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figure", "Report", "summarize"]


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min and max of the repetitions, and the repetitions themselves."""
    if not values:
        raise ValueError("a figure needs at least one repetition")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


@dataclass
class Figure:
    """One measured figure: a configuration, a workload, a metric and its repetitions."""

    configuration: str
    workload: str
    metric: str
    unit: str
    values: list[float]
    throughput: bool = False
    notes: str = ""

    def as_json(self, pgbench: dict[int, float]) -> dict[str, Any]:
        """The figure as a JSON object; PostgreSQL throughput also as a share of pgbench."""
        body: dict[str, Any] = {
            "configuration": self.configuration,
            "workload": self.workload,
            "metric": self.metric,
            "unit": self.unit,
            **summarize(self.values),
        }
        if self.notes:
            body["notes"] = self.notes
        share = self.pgbench_share(pgbench)
        if share:
            body["fraction_of_pgbench_tps"] = share
        return body

    def pgbench_share(self, pgbench: dict[int, float]) -> dict[str, float]:
        """Median over pgbench TPS, per pgbench client count (PostgreSQL throughput only)."""
        if not self.throughput or self.configuration != "http-postgresql":
            return {}
        median = statistics.median(self.values)
        return {f"clients_{c}": median / tps for c, tps in sorted(pgbench.items()) if tps > 0}


@dataclass
class Report:
    """Everything one benchmark run measured."""

    figures: list[Figure] = field(default_factory=list)
    pgbench: dict[int, list[float]] = field(default_factory=dict)

    def add(self, figure: Figure) -> None:
        """Record a figure."""
        self.figures.append(figure)

    def pgbench_medians(self) -> dict[int, float]:
        """Median pgbench TPS per client count."""
        return {c: statistics.median(v) for c, v in self.pgbench.items() if v}

    def find(self, configuration: str, workload: str, metric: str) -> float | None:
        """The median of one figure, or None when it was not measured."""
        for figure in self.figures:
            if (figure.configuration, figure.workload, figure.metric) == (
                configuration,
                workload,
                metric,
            ):
                return statistics.median(figure.values)
        return None

    def table(self) -> str:
        """The figures as a plain-text table."""
        pgbench = self.pgbench_medians()
        header = ["configuration", "workload", "metric", "median", "min", "max", "unit"]
        clients = sorted(pgbench)
        header += [f"/pgb-{c}" for c in clients]
        rows = [header]
        for clients_count, values in sorted(self.pgbench.items()):
            s = summarize(values)
            rows.append(
                ["postgresql", f"pgbench -N -c {clients_count}", "tps"]
                + [_number(s["median"]), _number(s["min"]), _number(s["max"]), "tx/s"]
                + [""] * len(clients)
            )
        for figure in self.figures:
            s = summarize(figure.values)
            share = figure.pgbench_share(pgbench)
            rows.append(
                [figure.configuration, figure.workload, figure.metric]
                + [_number(s["median"]), _number(s["min"]), _number(s["max"]), figure.unit]
                + [f"{share[f'clients_{c}']:.2f}" if share else "" for c in clients]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        numeric = {3, 4, 5} | set(range(7, len(header)))
        lines = []
        for index, row in enumerate(rows):
            cells = [
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def figures_json(self) -> list[dict[str, Any]]:
        """Every figure as JSON."""
        pgbench = self.pgbench_medians()
        return [figure.as_json(pgbench) for figure in self.figures]

    def pgbench_json(self) -> dict[str, Any]:
        """The TPS of pgbench per client count."""
        return {f"clients_{c}": summarize(v) for c, v in sorted(self.pgbench.items()) if v}


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
