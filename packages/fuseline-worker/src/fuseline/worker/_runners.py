"""Where a step's code runs on a worker: a thread, or the worker's event loop.

Every runner goes through core's ``execute_step``/``execute_step_async``, so
conditions, argument binding, hooks and policies behave exactly as they do
under ``Workflow.run()``. A runner calls ``done`` once per job: with the
step's outcome, or with None when the job was cancelled before it finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fuseline.messages import StepError
from fuseline.policies.stopping import stop_when
from fuseline.status import Status
from fuseline.workflow._execution import StepOutcome, execute_step, execute_step_async

if TYPE_CHECKING:
    from fuseline.step import Step
    from fuseline.workflow import Workflow

__all__ = ["AsyncRunner", "Done", "StepJob", "StepRunner", "ThreadRunner", "failed"]

Done = Callable[[StepOutcome | None], None]


@dataclass(frozen=True)
class StepJob:
    """One execution of one step, with this run's own inputs and results."""

    workflow: Workflow
    step: Step
    results: dict[str, Any]
    inputs: dict[str, Any]
    should_stop: Callable[[], bool] | None = None

    def execute(self) -> StepOutcome:
        """Run the step in this thread; never raises.

        Policies that would start more work (a retry) ask ``should_stop`` first.
        """
        try:
            with stop_when(self.should_stop):
                return execute_step(self.workflow, self.step, self.results, self.inputs)
        except BaseException as exc:  # SystemExit and the like from user code
            return failed(exc)


def failed(exc: BaseException) -> StepOutcome:
    """A FAILED outcome describing ``exc``."""
    return StepOutcome(Status.FAILED, error=StepError.from_exception(exc), exception=exc)


class StepRunner(Protocol):
    """Starts jobs and tells when they end."""

    def start(self, job: StepJob, done: Done) -> Callable[[], None] | None:
        """Start ``job``; return a function that stops it, or None if it cannot be stopped."""
        ...

    def close(self) -> None:
        """Release the runner's resources; running jobs are left to end on their own."""
        ...


class ThreadRunner:
    """Runs sync steps on daemon threads that are kept for the next step.

    The threads are daemons: Python cannot stop a thread from outside, and a
    step that never returns must not keep the worker process alive once it
    has decided to exit. A thread that finished a step waits a while for the
    next one instead of exiting, since starting a thread costs more than
    many small steps do; a new thread is started only when none is idle, so
    a step that hangs never holds up the others.

    Args:
        idle_seconds: How long a thread without work waits before it exits.
    """

    def __init__(self, idle_seconds: float = 10.0) -> None:
        self._jobs: queue.SimpleQueue[tuple[StepJob, Done] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._idle_seconds = idle_seconds

    def start(self, job: StepJob, done: Done) -> None:
        """Hand ``job`` to an idle thread, or a new one; it cannot be stopped, so return None."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((job, done))
        if spawn:
            threading.Thread(target=self._serve, name="fuseline-step", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                item = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._jobs.empty():
                        self._idle -= 1
                        return
                continue  # a job was promised to an idle thread: take it
            if item is None:
                return
            job, done = item
            done(job.execute())
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Let idle threads exit; running steps end on their own."""
        with self._lock:
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)


class AsyncRunner:
    """Runs async steps as tasks on one event loop in a background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="fuseline-worker-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def start(self, job: StepJob, done: Done) -> Callable[[], None]:
        """Schedule ``job`` on the loop; the returned function cancels its task."""
        future = asyncio.run_coroutine_threadsafe(
            execute_step_async(job.workflow, job.step, job.results, job.inputs),
            self._running_loop(),
        )

        def finished(future: concurrent.futures.Future[StepOutcome]) -> None:
            if future.cancelled():
                done(None)
            elif (exc := future.exception()) is not None:
                done(failed(exc))
            else:
                done(future.result())

        future.add_done_callback(finished)

        def cancel() -> None:
            future.cancel()

        return cancel

    def close(self) -> None:
        """Cancel what is left on the loop, stop it and close it."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # A task that ignores cancellation must not hang the shutdown.
        with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
