"""The workflow of the quick-start demo: shipping orders.

Each run handles one order::

    LoadOrder -> FraudCheck -> ChooseRoute -(express)-> BookCourier  -+
                 (timeout)                 -(standard)-> BookParcel   -+-> Confirm

``FraudCheck`` has a 1-second timeout, and one customer makes it hang.
``ChooseRoute`` returns "express" or "standard", and only that branch runs
(the other is skipped); ``Confirm`` takes whichever booking happened (an OR
join). ``BookCourier``
calls a courier that is busy the first time it is asked about an order, and
a retry policy books it on the second try.

The workers import this module (``demo_workflows:workflow``), and so does
``demo.py``, which dispatches the runs.
"""

from __future__ import annotations

import threading
import time

from fuseline import Depends, Step, Workflow
from fuseline.policies import RetryPolicy, StepTimeoutPolicy

ORDERS: dict[int, tuple[str, float]] = {
    101: ("ada", 40.00),
    102: ("grace", 250.00),
    103: ("linus", 75.50),
    104: ("barbara", 980.00),
    105: ("mallory", 13.00),
    106: ("edsger", 120.00),
}
EXPRESS_FROM = 100.00
SUSPICIOUS = {"mallory"}


class LoadOrder(Step):
    def run_step(self, order_id: int) -> dict[str, object]:
        customer, amount = ORDERS[order_id]
        return {"order_id": order_id, "customer": customer, "amount": amount}


class FraudCheck(Step):
    def run_step(self, order: dict[str, object]) -> dict[str, object]:
        if order["customer"] in SUSPICIOUS:
            time.sleep(3)  # a scoring service that never answers in time
        return order


class ChooseRoute(Step):
    def run_step(self, order: dict[str, object]) -> str:
        amount = order["amount"]
        assert isinstance(amount, float)
        return "express" if amount >= EXPRESS_FROM else "standard"


load = LoadOrder()
check = FraudCheck(policies=[StepTimeoutPolicy(1.0)])
route = ChooseRoute()


# How often this process asked the courier about each order.
_asked_courier: dict[int, int] = {}
_asked_lock = threading.Lock()


class BookCourier(Step):
    def run_step(self, order_id: int) -> dict[str, object]:
        with _asked_lock:
            tries = _asked_courier[order_id] = _asked_courier.get(order_id, 0) + 1
        if tries == 1:
            raise ConnectionError("the courier's line is busy")
        return {"how": "express courier", "customer": ORDERS[order_id][0], "tries": tries}


class BookParcel(Step):
    def run_step(self, order_id: int) -> dict[str, object]:
        return {"how": "standard parcel", "customer": ORDERS[order_id][0], "tries": 1}


courier = BookCourier(policies=[RetryPolicy(max_retries=2, wait=0.2)])
parcel = BookParcel()


class Confirm(Step):
    def run_step(self, booking: dict[str, object] = Depends(courier, parcel)) -> str:
        tries = booking["tries"]
        after = f" after {tries} tries" if tries != 1 else ""
        return f"{booking['how']} booked for {booking['customer']}{after}"


load >> check >> route
(route - "express") >> courier
(route - "standard") >> parcel

workflow = Workflow(outputs=[Confirm()], workflow_id="ship-order", version="1")
