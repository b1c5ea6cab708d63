"""Threads that make blocking calls on behalf of the event loop.

``loop.run_in_executor`` with a ``ThreadPoolExecutor`` passes every call
through two futures (a thread-safe one, then an asyncio one chained to it),
each with its own lock and callbacks. A broker request makes one such call,
so that machinery showed up as a tenth of the server's CPU. A lane does the
same job with one asyncio future: the thread that ran the call hands its
outcome straight to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from fuseline.errors import BrokerUnavailableError

__all__ = ["ThreadLane"]

T = TypeVar("T")

log = logging.getLogger("fuseline.broker.http")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _shutting_down() -> BrokerUnavailableError:
    return BrokerUnavailableError("This broker process is shutting down; try again.")


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ThreadLane:
    """Up to ``size`` threads running blocking calls for coroutines.

    Threads start as calls arrive, while none is idle, up to ``size``;
    further calls wait in line.

    Args:
        size: Most threads at once.
        name: Prefix of the threads' names.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._line: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def crowded(self) -> bool:
        """Whether calls are waiting in line because every thread is busy."""
        return not self._line.empty()

    async def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` in one of the lane's threads and return what it returns.

        Raises:
            BrokerUnavailableError: The lane is closed.
        """
        if self._closed:
            raise _shutting_down()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._line.put((loop, future, func))
        if not self._idle.acquire(blocking=False):
            self._grow()
        return await future

    def _grow(self) -> None:
        with self._lock:
            if self._closed or len(self._threads) >= self._size:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            item = self._line.get()
            if item is None:
                return
            loop, future, func = item
            # A caller that gave up (its request was dropped) needs no answer.
            if not future.cancelled():
                try:
                    result = func()
                except BaseException as exc:  # handed to the awaiting coroutine
                    self._answer(loop, _fail, future, exc)
                else:
                    self._answer(loop, _settle, future, result)
            self._idle.release()

    @staticmethod
    def _answer(
        loop: asyncio.AbstractEventLoop,
        how: Callable[[asyncio.Future[Any], Any], None],
        future: asyncio.Future[Any],
        value: Any,
    ) -> None:
        try:
            loop.call_soon_threadsafe(how, future, value)
        except RuntimeError:
            # The loop is closed: the process is on its way out.
            log.debug("A call finished after its event loop closed; its answer is dropped.")

    def close(self) -> None:
        """Take no more calls; calls not yet started fail, running ones finish."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                item = self._line.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                loop, future, _ = item
                self._answer(loop, _fail, future, _shutting_down())
        for _ in threads:
            self._line.put(None)
