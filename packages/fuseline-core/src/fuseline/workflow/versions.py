"""Picking a stored schema by workflow id and version, the latest when none is given.

Brokers, clients and the HTTP server all answer "which schema does this id
mean?" the same way, so the rule lives here, with the schemas themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fuseline.errors import WorkflowNotFoundError
from fuseline.workflow.schema import WorkflowSchema

__all__ = ["find_workflow", "latest_version"]

_NUMBER = re.compile(r"(\d+)")


def _version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    # Compare digit runs as numbers so that "10" comes after "9" and "1.10"
    # after "1.9"; other text compares as text.
    parts = _NUMBER.split(version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts if part)


def latest_version(versions: Iterable[str]) -> str | None:
    """Return the highest version, comparing runs of digits as numbers.

    ``latest_version(["1", "2", "10"])`` is ``"10"``; ``None`` for no versions.
    """
    ordered = sorted(versions, key=_version_order)
    return ordered[-1] if ordered else None


def find_workflow(
    schemas: list[WorkflowSchema], workflow_id: str, version: str | None
) -> WorkflowSchema:
    """Pick ``workflow_id`` at ``version`` (the latest version when None) from ``schemas``.

    Raises:
        WorkflowNotFoundError: No stored schema matches.
    """
    matching = {s.version: s for s in schemas if s.workflow_id == workflow_id}
    chosen = version if version is not None else latest_version(matching)
    if chosen is None or chosen not in matching:
        wanted = f"version {version!r} of " if version is not None else ""
        raise WorkflowNotFoundError(
            f"The broker has no {wanted}workflow {workflow_id!r}; a worker that runs it "
            "must register first (or dispatch the schema itself).",
            details={"workflow_id": workflow_id, "version": version},
        )
    return matching[chosen]
