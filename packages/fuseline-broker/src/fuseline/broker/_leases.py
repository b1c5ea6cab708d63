"""Who holds a step: the checks behind reports and heartbeats.

A report or heartbeat counts only with the current token of a live lease, as
judged by the storage's clock. Everything else is refused without a change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fuseline.broker._records import to_time
from fuseline.errors import LeaseConflictError
from fuseline.messages import KeepAliveReply, LeaseRef, StepReport
from fuseline.status import Status
from fuseline.storage import StorageTransaction, StoredStep

__all__ = ["extend_leases", "lease_ran_out", "report_applies"]


def lease_ran_out(step: StoredStep, now: float, reachable_for: float | None) -> bool:
    """Whether the RUNNING ``step``'s lease counts as run out at ``now``.

    Args:
        step: The step.
        now: The storage's clock.
        reachable_for: Seconds since the storage came back after an outage
            this broker saw, or None. Until a step has had one full lease of
            reachable storage, its worker may not have been able to
            heartbeat, so a deadline that passed does not count yet.
    """
    if step.deadline is None or step.deadline >= now:
        return False
    return reachable_for is None or reachable_for >= step.lease_seconds


def report_applies(
    step: StoredStep | None,
    worker_id: str,
    report: StepReport,
    result: Any,
    now: float,
    reachable_for: float | None = None,
) -> bool:
    """Whether ``report`` may be applied to ``step`` (see :func:`lease_ran_out`).

    Returns:
        True when the worker holds the step's live lease; False when the
        report repeats the one already accepted (answer it, change nothing).

    Raises:
        LeaseConflictError: Anything else: never handed out, back in the
            queue, held by another worker or token, expired, or finished with
            a different outcome.
    """
    where = f"step {report.step_name!r} of run {report.instance_id!r}"
    token_matches = report.lease_token is None or (
        step is not None and report.lease_token == step.lease_token
    )
    if step is None or step.status is Status.PENDING:
        raise LeaseConflictError(
            f"No worker holds {where}: it was never handed out, or its lease ran out and "
            "it went back to the queue. Do not report it; the broker will hand it out again.",
            details={"step_name": report.step_name},
        )
    if step.status is not Status.RUNNING:
        replay = (
            step.worker_id == worker_id
            and token_matches
            and step.status is report.state
            and step.result == result
        )
        if replay:
            return False
        raise LeaseConflictError(
            f"{where.capitalize()} already finished as {step.status.value}; "
            "a second, different report is not accepted.",
            details={"step_name": report.step_name, "status": step.status.value},
        )
    if step.worker_id != worker_id or not token_matches:
        raise LeaseConflictError(
            f"This worker does not hold the lease on {where} (another worker holds it, or "
            "the lease token is stale). Drop the step without reporting it.",
            details={"step_name": report.step_name},
        )
    if lease_ran_out(step, now, reachable_for):
        raise LeaseConflictError(
            f"The lease on {where} ran out before the report arrived; the step will be "
            "handed out again. Heartbeat more often than the lease length.",
            details={"step_name": report.step_name},
        )
    return True


def extend_leases(
    t: StorageTransaction,
    leases: tuple[list[StoredStep], set[str]],
    lease_tokens: Sequence[str] | None,
    reachable_for: float | None = None,
) -> KeepAliveReply:
    """Extend the live leases among ``leases`` named by ``lease_tokens`` (None: all of them).

    ``leases`` is what :meth:`StorageTransaction.leases_of` read for the
    worker. Leases the worker no longer holds come back as ``lost`` (a token
    the broker does not know has empty run and step names); leases of
    cancelled runs as ``cancelled``, not extended. The extension is the
    transaction's last write.
    """
    now = t.now()
    running, cancelled_runs = leases
    held = {row.lease_token: row for row in running}
    wanted = [tok for tok in held if tok] if lease_tokens is None else list(lease_tokens)
    wanted = list(dict.fromkeys(wanted))
    live = {tok: held[tok] for tok in wanted if tok in held}
    reply = KeepAliveReply()
    extending: list[tuple[StoredStep, float, LeaseRef]] = []
    for token in wanted:
        row = live.get(token)
        if row is None or lease_ran_out(row, now, reachable_for):
            reply.lost.append(
                LeaseRef(
                    instance_id=row.run_id if row else "",
                    step_name=row.step_name if row else "",
                    lease_token=token,
                )
            )
            continue
        ref = LeaseRef(instance_id=row.run_id, step_name=row.step_name, lease_token=token)
        if row.run_id in cancelled_runs:
            reply.cancelled.append(ref)
            continue
        extending.append((row, now + row.lease_seconds, ref))
    moved = t.extend_leases([(row, deadline) for row, deadline, _ in extending], last=True)
    deadlines: list[float] = []
    for row, deadline, ref in extending:
        if (row.run_id, row.step_name) in moved:
            reply.extended.append(ref)
            deadlines.append(deadline)
        else:
            # Read unlocked above: an expiry may have handed it on since.
            reply.lost.append(ref)
    reply.deadline = to_time(min(deadlines)) if deadlines else None
    return reply
