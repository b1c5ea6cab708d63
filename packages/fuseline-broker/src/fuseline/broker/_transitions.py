"""How a run's rows change when a step ends, a lease runs out or a run is cancelled.

These are the writes behind every broker call that moves a run forward. Each
function works inside one storage transaction, on a run whose row the caller
has locked, and asks :mod:`fuseline.workflow.rules` what follows; none of them
decides anything about the DAG itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from fuseline.broker._leases import lease_ran_out
from fuseline.broker._records import facts
from fuseline.messages import StepError
from fuseline.status import Status
from fuseline.storage import StorageTransaction, StoredRun, StoredStep
from fuseline.workflow import rules
from fuseline.workflow.rules import RunGraph, Settlement

__all__ = ["RunTransitions"]


@dataclass(frozen=True)
class RunTransitions:
    """The state changes of runs, with the broker's defaults for new step rows.

    Attributes:
        default_lease: Lease seconds of a step without a timeout.
        default_max_attempts: Hand-outs of a step without a retry policy.
        on_finished: Called with a run that just finished and its rows, once
            the transaction that finished it committed.
    """

    default_lease: float
    default_max_attempts: int
    on_finished: Callable[[RunGraph, StoredRun, list[StoredStep]], None] | None = None

    def new_step(
        self,
        graph: RunGraph,
        run: StoredRun,
        name: str,
        status: Status,
        now: float,
        or_winners: Mapping[str, str] | None = None,
    ) -> StoredStep:
        """The row of a step the rules just decided about (enqueued, skipped or cancelled)."""
        spec = graph.schema.step(name)
        attempts = spec.max_attempts if spec.retry is not None else self.default_max_attempts
        return StoredStep(
            run_id=run.run_id,
            step_name=name,
            workflow_id=run.workflow_id,
            version=run.version,
            status=status,
            max_attempts=attempts,
            lease_seconds=spec.timeout_seconds or self.default_lease,
            or_winners=dict(or_winners or {}),
            ready_at=now,
            finished_at=None if status is Status.PENDING else now,
        )

    def apply(
        self,
        t: StorageTransaction,
        graph: RunGraph,
        run: StoredRun,
        settlement: Settlement,
        now: float,
    ) -> list[StoredStep]:
        """Create the rows a settlement calls for; return them."""
        rows = self.rows_for(graph, run, settlement, now)
        t.add_steps(rows)
        return rows

    def rows_for(
        self, graph: RunGraph, run: StoredRun, settlement: Settlement, now: float
    ) -> list[StoredStep]:
        """The rows a settlement calls for, not stored yet."""
        rows = [
            self.new_step(graph, run, ready.name, Status.PENDING, now, ready.or_winners)
            for ready in settlement.ready
        ]
        rows += [self.new_step(graph, run, n, Status.SKIPPED, now) for n in settlement.skipped]
        rows += [self.new_step(graph, run, n, Status.CANCELLED, now) for n in settlement.cancelled]
        return rows

    def conclude(
        self,
        t: StorageTransaction,
        graph: RunGraph,
        run: StoredRun,
        rows: Iterable[StoredStep],
        now: float,
    ) -> None:
        """Store the run's status from its rows; a run that just finished gets its result."""
        rows = list(rows)
        run.status = rules.run_status(graph, facts(rows), cancel_requested=run.cancel_requested)
        if run.status.is_terminal and run.finished_at is None:
            results = {r.step_name: r.result for r in rows if r.status is Status.SUCCEEDED}
            run.finished_at = now
            run.result = {output: results.get(output) for output in graph.outputs}
            t.notify_runs()
            if self.on_finished is not None:
                on_finished, finished = self.on_finished, replace(run)
                t.after_commit(lambda: on_finished(graph, finished, rows))
        t.update_run(run)

    def finish(
        self,
        t: StorageTransaction,
        graph: RunGraph,
        run: StoredRun,
        step: StoredStep,
        rows: dict[str, StoredStep],
        now: float,
    ) -> None:
        """Record that ``step`` (already given its final state) ended; settle what follows."""
        run.finished_steps += 1
        step.finish_order = run.finished_steps
        step.finished_at = now
        step.deadline = None
        t.update_step(step)
        rows[step.step_name] = step
        settlement = rules.settle(graph, facts(rows.values()), [step.step_name])
        for row in self.apply(t, graph, run, settlement, now):
            rows[row.step_name] = row
        self.conclude(t, graph, run, rows.values(), now)

    def expire(
        self,
        t: StorageTransaction,
        graph: RunGraph,
        run: StoredRun,
        names: Iterable[str],
        reachable_for: float | None = None,
    ) -> int:
        """Requeue (or fail, past their attempts) the named steps whose lease ran out.

        Steps extended or reported since they were listed are left alone, and
        so are steps whose lease does not count as run out yet after an outage
        of the storage (see :func:`~fuseline.broker._leases.lease_ran_out`).
        Returns how many steps were handled.
        """
        rows = {row.step_name: row for row in t.steps_of(run.run_id)}
        now = t.now()
        handled = 0
        for name in names:
            step = rows.get(name)
            if step is None or step.status is not Status.RUNNING:
                continue
            if not lease_ran_out(step, now, reachable_for):
                continue
            handled += 1
            if step.attempt >= step.max_attempts or run.cancel_requested:
                step.status = Status.CANCELLED if run.cancel_requested else Status.FAILED
                step.error = StepError(
                    type="LeaseExpired",
                    message=(
                        f"No worker reported step {name!r} before its lease ran out, on attempt "
                        f"{step.attempt} of {step.max_attempts} (the worker died, hung or lost "
                        "the broker)."
                    ),
                ).model_dump()
                self.finish(t, graph, run, step, rows, now)
            else:
                step.status = Status.PENDING
                step.worker_id = None
                step.lease_token = None
                step.deadline = None
                step.ready_at = now
                t.update_step(step)
        return handled

    def cancel(self, t: StorageTransaction, graph: RunGraph, run: StoredRun) -> list[StoredStep]:
        """Cancel every step that has not started; return the run's rows afterwards.

        Running steps are left to their workers, who hear of it at their next
        heartbeat; the run ends CANCELLED once none is running.
        """
        now = t.now()
        run.cancel_requested = True
        # Locked: a claim that took a queued step meanwhile must not be
        # overwritten; once locked, such a step is seen RUNNING and left alone.
        rows = {row.step_name: row for row in t.steps_of(run.run_id, lock=True)}
        fresh: list[StoredStep] = []
        for name in rules.cancel_run(graph, facts(rows.values())):
            row = rows.get(name)
            if row is None:
                row = self.new_step(graph, run, name, Status.CANCELLED, now)
                fresh.append(row)
            else:
                row.status = Status.CANCELLED
                row.finished_at = now
                t.update_step(row)
            rows[name] = row
        t.add_steps(fresh)
        self.conclude(t, graph, run, rows.values(), now)
        return list(rows.values())
