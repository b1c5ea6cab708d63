"""A dispatch hands its run's first step to a worker already waiting in this process.

The step is leased in the dispatching transaction, so a run costs one
transaction fewer when a worker waits; these tests tell that apart by the
step's start, which is the dispatch's own clock reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from broker_contract_support import HandWorker, schema, wait_until

from fuseline.broker import StorageBroker
from fuseline.broker._handoff import Waiter, Waiters
from fuseline.errors import IdempotencyConflictError
from fuseline.messages import StepAssignment
from fuseline.status import Status

SINGLE = schema("handoff-single", steps=["only"])
OTHER = schema("handoff-other", steps=["only"])


class Poll:
    """A long poll of ``worker`` in a thread of its own."""

    def __init__(self, worker: HandWorker, wait: float = 10.0) -> None:
        self.found: list[StepAssignment | None] = []
        self._thread = threading.Thread(target=lambda: self.found.append(worker.claim(wait)))
        self._thread.start()

    def result(self) -> StepAssignment | None:
        self._thread.join(15)
        assert not self._thread.is_alive(), "the long poll never returned"
        return self.found[0]

    @property
    def waiting(self) -> bool:
        return self._thread.is_alive()


def waiters(broker: StorageBroker, count: int) -> Callable[[], bool]:
    return lambda: len(broker._waiters) == count


def test_the_first_step_goes_to_the_waiting_worker_in_the_dispatch_s_transaction(
    broker: StorageBroker,
) -> None:
    worker = HandWorker(broker, [SINGLE])
    poll = Poll(worker)
    wait_until(waiters(broker, 1), "the long poll to wait")

    run_id = broker.dispatch_workflow(SINGLE)

    # Leased before the dispatch returned, by the dispatch's transaction.
    details = broker.get_run(run_id)
    only = details.steps["only"]
    assert only.status is Status.RUNNING and only.worker_id == worker.worker_id
    assert only.started_at == details.created_at
    handed = poll.result()
    assert handed is not None and handed.instance_id == run_id
    worker.succeed(handed, 7)
    assert broker.get_run(run_id).result == {"only": 7}


def test_waiting_workers_are_served_in_the_order_they_started_waiting(
    broker: StorageBroker,
) -> None:
    first, second = HandWorker(broker, [SINGLE]), HandWorker(broker, [SINGLE])
    early = Poll(first)
    wait_until(waiters(broker, 1), "the first long poll to wait")
    late = Poll(second)
    wait_until(waiters(broker, 2), "the second long poll to wait")

    runs = [broker.dispatch_workflow(SINGLE, {"n": n}) for n in range(2)]

    early_step, late_step = early.result(), late.result()
    assert early_step is not None and early_step.instance_id == runs[0]
    assert late_step is not None and late_step.instance_id == runs[1]


def test_a_worker_waiting_for_other_workflows_is_not_handed_the_step(
    broker: StorageBroker,
) -> None:
    worker = HandWorker(broker, [OTHER])
    bystander = HandWorker(broker, [SINGLE])
    poll = Poll(worker)
    wait_until(waiters(broker, 1), "the long poll to wait")

    run_id = broker.dispatch_workflow(SINGLE)

    assert broker.get_run(run_id).steps["only"].status is Status.PENDING
    # The new step woke the poll, which found nothing it runs and waits again.
    wait_until(waiters(broker, 1), "the long poll to wait again")
    assert poll.waiting
    claimed = bystander.claim()
    assert claimed is not None and claimed.instance_id == run_id
    other = broker.dispatch_workflow(OTHER)
    handed = poll.result()
    assert handed is not None and handed.instance_id == other


def test_a_dispatch_that_fails_leaves_the_worker_waiting_for_the_next(
    broker: StorageBroker,
) -> None:
    worker = HandWorker(broker, [SINGLE])
    broker.dispatch_workflow(OTHER, idempotency_key="taken")  # a run no one here takes
    poll = Poll(worker)
    wait_until(waiters(broker, 1), "the long poll to wait")

    with pytest.raises(IdempotencyConflictError):
        broker.dispatch_workflow(SINGLE, idempotency_key="taken")

    wait_until(waiters(broker, 1), "the long poll to wait again")
    assert poll.waiting
    run_id = broker.dispatch_workflow(SINGLE)
    handed = poll.result()
    assert handed is not None and handed.instance_id == run_id


def test_a_repeated_dispatch_hands_the_waiting_worker_nothing_twice(
    broker: StorageBroker,
) -> None:
    worker = HandWorker(broker, [SINGLE])
    first_poll = Poll(worker)
    wait_until(waiters(broker, 1), "the long poll to wait")
    run_id = broker.dispatch_workflow(SINGLE, {"n": 1}, idempotency_key="once")
    handed = first_poll.result()
    assert handed is not None and handed.instance_id == run_id

    poll = Poll(worker)
    wait_until(waiters(broker, 1), "the second long poll to wait")
    # The repeat's transaction claims for the waiter before it knows the run
    # was refused: it finds nothing else ready, and the waiter waits on.
    assert broker.dispatch_workflow(SINGLE, {"n": 1}, idempotency_key="once") == run_id
    wait_until(waiters(broker, 1), "the long poll to wait again")
    assert poll.waiting
    assert broker.get_run(run_id).steps["only"].attempts == 1

    later = broker.dispatch_workflow(SINGLE)
    handed = poll.result()
    assert handed is not None and handed.instance_id == later


def test_a_waiter_taken_for_a_dispatch_cannot_be_withdrawn() -> None:
    queue = Waiters()
    mine = Waiter("worker", [("wf", "1")], 1)
    queue.add(mine)

    assert queue.take(("other", "1")) is None
    assert queue.take(("wf", "1")) is mine
    # Its long poll, timing out now, learns that it must wait for the dispatch.
    assert queue.withdraw(mine) is False
    assert not mine.is_delivered()
    handed: list[Any] = []
    mine.deliver(handed)
    assert mine.wait_delivered() is handed and len(queue) == 0
