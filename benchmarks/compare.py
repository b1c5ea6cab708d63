"""Compare two benchmark documents written by ``run.py``: what got better, what got worse.

Usage::

    python benchmarks/compare.py bench-results/BASE.json bench-results/NEW.json
    python benchmarks/compare.py BASE.json NEW.json --threshold 0.05 --fail-on-worse

Figures are matched by configuration, workload and metric (the workload's
label includes its size, so a quick run never matches a full one). A figure
is called better or worse only when its median moved by more than the
threshold (10 % by default) *and* the two runs' ranges do not overlap: the
worst repetition of one is still better than the best of the other. Anything
less is within the noise of a 2-core virtual machine, where the same figure
spreads by about 10 % between runs.

Throughput (steps/s, runs/s, calls/s, tx/s) is better higher; everything
else (latency, CPU, memory) is better lower. When both documents measured
pgbench, PostgreSQL throughput is also compared as a share of pgbench with
8 clients, which is what carries across machines; the pgbench row itself
shows whether the two runs had the same machine to work with.

The exit code is 0, or 1 with ``--fail-on-worse`` when some figure got worse
(2 for unreadable input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Change", "compare", "main"]

HIGHER_IS_BETTER = {"steps/s", "runs/s", "calls/s", "tx/s"}
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Change:
    """One figure in both documents."""

    key: Key
    unit: str
    base: dict[str, float]
    new: dict[str, float]
    verdict: str  # "better", "worse" or "" (within the noise)
    base_share: float | None = None
    new_share: float | None = None

    @property
    def ratio(self) -> float | None:
        """New median over base median."""
        return self.new["median"] / self.base["median"] if self.base["median"] else None


def _figures(document: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    figures = {
        (f["configuration"], f["workload"], f["metric"]): f for f in document.get("results", [])
    }
    for clients, tps in (document.get("pgbench") or {}).items():
        count = clients.removeprefix("clients_")
        figures[("postgresql", f"pgbench -N -c {count}", "tps")] = {"unit": "tx/s", **tps}
    return figures


def _share(figure: dict[str, Any]) -> float | None:
    share = (figure.get("fraction_of_pgbench_tps") or {}).get("clients_8")
    return float(share) if share is not None else None


def _verdict(unit: str, base: dict[str, Any], new: dict[str, Any], threshold: float) -> str:
    if not base["median"]:
        return ""
    change = new["median"] / base["median"] - 1
    if unit in HIGHER_IS_BETTER:
        if change > threshold and new["min"] > base["max"]:
            return "better"
        if change < -threshold and new["max"] < base["min"]:
            return "worse"
    else:
        if change < -threshold and new["max"] < base["min"]:
            return "better"
        if change > threshold and new["min"] > base["max"]:
            return "worse"
    return ""


def compare(
    base: dict[str, Any], new: dict[str, Any], threshold: float = 0.10
) -> tuple[list[Change], list[Key], list[Key]]:
    """The figures both documents hold, then those only the base and only the new one hold."""
    old_figures, new_figures = _figures(base), _figures(new)
    changes = []
    for key, before in old_figures.items():
        after = new_figures.get(key)
        if after is None:
            continue
        unit = before.get("unit", "")
        changes.append(
            Change(
                key,
                unit,
                {k: float(before[k]) for k in ("median", "min", "max")},
                {k: float(after[k]) for k in ("median", "min", "max")},
                _verdict(unit, before, after, threshold),
                _share(before),
                _share(after),
            )
        )
    only_base = [key for key in old_figures if key not in new_figures]
    only_new = [key for key in new_figures if key not in old_figures]
    return changes, only_base, only_new


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(changes: Sequence[Change]) -> str:
    """The changes as a plain-text table."""
    header = ["configuration", "workload", "metric", "base", "new", "change", "share-8", "verdict"]
    rows = [header]
    for change in changes:
        ratio = change.ratio
        share = ""
        if change.base_share is not None and change.new_share is not None:
            share = f"{change.base_share:.3f} -> {change.new_share:.3f}"
        rows.append(
            [
                *change.key,
                f"{_number(change.base['median'])} ({_number(change.base['min'])}-"
                f"{_number(change.base['max'])})",
                f"{_number(change.new['median'])} ({_number(change.new['min'])}-"
                f"{_number(change.new['max'])})",
                "" if ratio is None else f"{(ratio - 1) * 100:+.1f}%",
                share,
                change.verdict,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("suite") != "fuseline-bench":
        raise SystemExit(f"{path} is not a document written by benchmarks/run.py")
    return document


def _describe(label: str, path: Path, document: dict[str, Any]) -> str:
    machine = document.get("machine") or {}
    return (
        f"{label}: {path.name}, {document.get('started_at', '?')}, "
        f"{machine.get('cpu', '?')} x{machine.get('cores', '?')}, "
        f"Python {machine.get('python', '?')}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the earlier document (the reference)")
    parser.add_argument("new", type=Path, help="the later document")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="smallest change of the median that counts, as a fraction (default 0.10)",
    )
    parser.add_argument(
        "--fail-on-worse", action="store_true", help="exit with 1 when some figure got worse"
    )
    options = parser.parse_args(argv)
    if not 0 <= options.threshold < 1:
        parser.error("--threshold must be a fraction from 0 up to 1, such as 0.1")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison; see the module's docstring for the exit code."""
    try:
        options = parse_args(argv)
        base, new = _load(options.base), _load(options.new)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        return 2 if exc.code else 0
    changes, only_base, only_new = compare(base, new, options.threshold)
    print(_describe("base", options.base, base))
    print(_describe("new ", options.new, new))
    print()
    if changes:
        print(table(changes))
    else:
        print("The two documents have no figure in common.")
    for label, keys in (("base", only_base), ("new", only_new)):
        if keys:
            groups = dict.fromkeys(
                f"{configuration} {workload}" for configuration, workload, _ in keys
            )
            print(f"{len(keys)} figures only in {label}, of: " + "; ".join(groups))
    worse = [c for c in changes if c.verdict == "worse"]
    better = [c for c in changes if c.verdict == "better"]
    print()
    print(
        f"{len(better)} better, {len(worse)} worse, {len(changes) - len(better) - len(worse)} "
        f"within the noise (threshold {options.threshold:.0%}, ranges apart)"
    )
    return 1 if worse and options.fail_on_worse else 0


if __name__ == "__main__":
    sys.exit(main())
