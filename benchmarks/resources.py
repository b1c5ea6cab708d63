"""Memory and CPU of processes, read from ``/proc`` (Linux only).

``VmHWM`` in ``/proc/<pid>/status`` is a process's peak resident set size
since it started; ``utime`` and ``stime`` in ``/proc/<pid>/stat`` are the
CPU time it has used, in clock ticks. Reading them costs nothing in the
processes measured.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "descendants", "machine", "peak_rss_mib", "supported"]

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def supported() -> bool:
    """Whether this system has the ``/proc`` files the figures come from."""
    return (_PROC / "self" / "status").exists() and (_PROC / "self" / "stat").exists()


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of ``pid`` in MiB, or None when it cannot be read."""
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            kib = int(line.split()[1])
            return kib / 1024
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system) used so far by the processes, in seconds.

    Processes that have gone count as zero.
    """
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state is field 3, utime field 14, stime field 15.
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS_PER_SECOND


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def machine(load_before: Sequence[float], load_after: Sequence[float]) -> dict[str, Any]:
    """The machine the figures come from, and how busy it was."""
    cpu = platform.processor() or platform.machine()
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }
