"""The outbox sends reports that wait together, as one batch, to a real broker.

Reports are queued before the outbox starts, so its one sending thread finds
them all waiting and must send them in one ``report_steps`` call; the broker
is a real ``MemoryBroker`` behind ``LocalBrokerClient``.
"""

from __future__ import annotations

import threading
from typing import Any

from worker_fakes import wait_until

from fuseline import Step, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.errors import BrokerUnavailableError, NotFoundError
from fuseline.messages import ReportBatchReply, StepAssignment, StepReport
from fuseline.status import Status
from fuseline.worker._held import HeldStep, HeldSteps
from fuseline.worker._outbox import Outbox


class Echo(Step):
    def run_step(self, n: int) -> Any:
        return n


class Then(Step):
    def run_step(self, value: Any = None) -> str:
        return "then"


def _chain() -> Workflow:
    first, then = Echo(), Then()
    first >> then
    return Workflow(outputs=[then], workflow_id="batch-chain")


class _CountingClient(LocalBrokerClient):
    """Records each batch sent; can fail the first batches like an absent or older broker."""

    def __init__(self, broker: MemoryBroker, *failures: BaseException) -> None:
        super().__init__(broker)
        self.batches: list[list[str]] = []
        self.singles: list[str] = []
        self._failures = list(failures)

    def report_steps(
        self, worker_id: str, reports: list[StepReport], *, claim: int = 0
    ) -> ReportBatchReply:
        self.batches.append([r.instance_id for r in reports])
        if self._failures:
            raise self._failures.pop(0)
        return super().report_steps(worker_id, reports, claim=claim)

    def report_step(
        self, worker_id: str, report: StepReport, *, claim_next: bool = False
    ) -> StepAssignment | None:
        self.singles.append(report.instance_id)
        return super().report_step(worker_id, report, claim_next=claim_next)


class _Setup:
    """A registered worker holding the first step of ``len(values)`` runs."""

    def __init__(self, values: list[Any], *failures: BaseException) -> None:
        self.broker = MemoryBroker(max_result_bytes=1000)
        self.client = _CountingClient(self.broker, *failures)
        workflow = _chain()
        schema = workflow.to_schema()
        self.worker_id = self.client.register_worker([schema])
        self.runs = [self.client.dispatch_workflow(schema, {"n": n}) for n in values]
        self.held = HeldSteps(len(values))
        assert self.held.reserve_free(lambda: False) == len(values)
        self.claimed: list[tuple[HeldStep | None, StepAssignment]] = []
        self.fatal: list[BaseException] = []
        self.outbox = Outbox(
            self.client,
            lambda: self.worker_id,
            self.held,
            may_claim=lambda: True,
            on_claimed=self._on_claimed,
            on_fatal=self.fatal.append,
            halting=threading.Event(),
            max_backoff=0.05,
            senders=1,
            batch=8,
        )
        self.firsts = self.client.get_steps(self.worker_id, max_steps=len(values))
        assert len(self.firsts) == len(values)
        for assignment in self.firsts:
            self.held.add(HeldStep(assignment))

    def _on_claimed(self, reported: HeldStep | None, assignment: StepAssignment) -> None:
        new = HeldStep(assignment)
        if reported is None:
            self.held.admit(new)
        else:
            self.held.hand_over(reported, new)
        self.claimed.append((reported, assignment))

    def report_all(self) -> None:
        for held in self.held.all():
            a = held.assignment
            report = StepReport(
                workflow_id=a.workflow_id,
                instance_id=a.instance_id,
                step_name=a.step_name,
                state=Status.SUCCEEDED,
                result="x" * a.workflow_inputs["n"],
                lease_token=a.lease_token,
            )
            self.outbox.put(held, report)
        self.outbox.start()

    def settled(self) -> bool:
        return all(h.assignment.step_name == "Then" for h in self.held.all())


def test_waiting_reports_go_in_one_batch_and_claim_their_successors() -> None:
    setup = _Setup([1, 2, 3])
    try:
        setup.report_all()
        wait_until(lambda: len(setup.claimed) == 3)
    finally:
        setup.outbox.close()

    assert setup.client.batches == [[a.instance_id for a in setup.firsts]]
    assert setup.client.singles == []
    # Each claimed successor took the slot of a reported step.
    assert {a.instance_id for _, a in setup.claimed} == set(setup.runs)
    assert all(reported is not None for reported, _ in setup.claimed)
    for _, assignment in setup.claimed:
        assert assignment.step_name == "Then"
        assert assignment.results == {"Echo": "x" * assignment.workflow_inputs["n"]}
    assert setup.settled() and len(setup.held.all()) == 3


def test_a_result_refused_in_a_batch_is_reported_as_a_failure() -> None:
    setup = _Setup([1, 5000, 2])
    big = setup.runs[1]
    try:
        setup.report_all()
        wait_until(lambda: setup.broker.get_run(big).status is Status.FAILED)
        wait_until(lambda: len(setup.claimed) == 2)
    finally:
        setup.outbox.close()

    assert len(setup.client.batches) == 1 and setup.client.singles == [big]
    failed = setup.broker.get_run(big).steps["Echo"]
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error.type == "PayloadTooLargeError"
    assert {a.instance_id for _, a in setup.claimed} == {setup.runs[0], setup.runs[2]}
    # The failed step's slot was given back; the two successors hold theirs.
    assert len(setup.held.all()) == 2 and setup.settled()


def test_an_unreachable_broker_gets_the_same_batch_again() -> None:
    setup = _Setup([1, 2], BrokerUnavailableError("down"), BrokerUnavailableError("down"))
    try:
        setup.report_all()
        wait_until(lambda: len(setup.claimed) == 2)
    finally:
        setup.outbox.close()

    first_batch = [a.instance_id for a in setup.firsts]
    assert setup.client.batches == [first_batch] * 3
    for run_id in setup.runs:
        assert setup.broker.get_run(run_id).steps["Echo"].status is Status.SUCCEEDED


def test_a_broker_without_batches_gets_the_reports_one_by_one() -> None:
    setup = _Setup([1, 2], NotFoundError("No route POST /v1/workers/w/reports/batch."))
    try:
        setup.report_all()
        wait_until(lambda: len(setup.claimed) == 2)
    finally:
        setup.outbox.close()

    assert len(setup.client.batches) == 1
    assert sorted(setup.client.singles) == sorted(setup.runs)
    assert setup.fatal == []
    for run_id in setup.runs:
        assert setup.broker.get_run(run_id).steps["Echo"].status is Status.SUCCEEDED
