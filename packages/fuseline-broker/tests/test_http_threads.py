"""The server's thread lanes and token check, on their own."""

from __future__ import annotations

import asyncio
import threading

import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN

from fuseline.broker.http._auth import CLIENT, WORKER, Role, TokenCheck
from fuseline.broker.http._threads import ThreadLane
from fuseline.errors import AuthenticationError, BrokerUnavailableError, PermissionDeniedError


def test_a_lane_hands_back_results_and_errors_to_the_awaiting_coroutine() -> None:
    lane = ThreadLane(2, "test-lane")

    def fail() -> None:
        raise KeyError("missing")

    async def main() -> tuple[list[str], BaseException]:
        names = await asyncio.gather(
            *(lane.call(lambda: threading.current_thread().name) for _ in range(4))
        )
        with pytest.raises(KeyError) as caught:
            await lane.call(fail)
        return list(names), caught.value

    names, error = asyncio.run(main())
    lane.close()
    assert all(name.startswith("test-lane-") for name in names)
    assert error.args == ("missing",)


def test_a_lane_runs_at_most_its_size_at_once_and_queues_the_rest() -> None:
    lane = ThreadLane(2, "test-lane")
    running = 0
    most = 0
    counter = threading.Lock()
    release = threading.Event()

    def busy() -> int:
        nonlocal running, most
        with counter:
            running += 1
            most = max(most, running)
        release.wait(10)
        with counter:
            running -= 1
        return 1

    async def main() -> int:
        calls = [asyncio.ensure_future(lane.call(busy)) for _ in range(5)]
        deadline = asyncio.get_running_loop().time() + 10
        while running < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        release.set()
        return sum(await asyncio.gather(*calls))

    assert asyncio.run(main()) == 5
    lane.close()
    assert most == 2


def test_a_lane_is_crowded_only_while_a_call_waits_for_a_thread() -> None:
    lane = ThreadLane(1, "test-lane")
    started = threading.Event()
    release = threading.Event()

    def hold() -> bool:
        started.set()
        release.wait(10)
        return lane.crowded

    async def main() -> tuple[bool, bool, bool, bool]:
        idle = lane.crowded
        first = asyncio.ensure_future(lane.call(hold))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        busy_alone = lane.crowded
        second = asyncio.ensure_future(lane.call(lambda: lane.crowded))
        await asyncio.sleep(0)  # the second call is now in line
        in_line = lane.crowded
        release.set()
        seen_by_first, seen_by_second = await asyncio.gather(first, second)
        assert seen_by_first  # the second call still waited when the first ended
        return idle, busy_alone, in_line, seen_by_second

    idle, busy_alone, in_line, last = asyncio.run(main())
    lane.close()
    assert (idle, busy_alone, in_line, last) == (False, False, True, False)


def test_a_closed_lane_refuses_calls_and_fails_the_ones_still_waiting() -> None:
    lane = ThreadLane(1, "test-lane")
    started = threading.Event()
    release = threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "finished"

    async def main() -> tuple[object, object]:
        first = asyncio.ensure_future(lane.call(hold))
        second = asyncio.ensure_future(lane.call(lambda: "never"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        lane.close()
        release.set()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        with pytest.raises(BrokerUnavailableError):
            await lane.call(lambda: "late")
        return outcomes[0], outcomes[1]

    first, second = asyncio.run(main())
    assert first == "finished"
    assert isinstance(second, BrokerUnavailableError)


def test_a_remembered_token_keeps_its_own_roles() -> None:
    check = TokenCheck([WORKER_TOKEN], [CLIENT_TOKEN])
    for _ in range(3):
        assert check.roles(f"Bearer {WORKER_TOKEN}") == {Role.WORKER}
        check.require(f"Bearer {WORKER_TOKEN}", WORKER)
        with pytest.raises(PermissionDeniedError):
            check.require(f"Bearer {WORKER_TOKEN}", CLIENT)
        assert check.roles(f"Bearer {CLIENT_TOKEN}") == {Role.CLIENT}


def test_an_invalid_token_is_refused_every_time() -> None:
    check = TokenCheck([WORKER_TOKEN], [CLIENT_TOKEN])
    check.roles(f"Bearer {WORKER_TOKEN}")
    for header in ["Bearer wrong-token-0123456789", f"Basic {WORKER_TOKEN}", "Bearer", ""]:
        for _ in range(2):
            with pytest.raises(AuthenticationError):
                check.roles(header)
