"""Running sync steps in forked child processes, so that they can be killed.

A thread cannot be stopped from outside; a process can. With
``ProcessEngine(..., sync_steps="process")`` each sync step runs in a child
forked from the worker, which is killed when the step's lease is lost, its run
is cancelled or the worker stops at once. The child runs the whole of core's
``execute_step`` (binding, hooks, policies) and sends the outcome back as JSON
over a pipe. POSIX only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from fuseline.messages import StepError
from fuseline.status import Status
from fuseline.worker._runners import Done, StepJob
from fuseline.workflow._execution import StepOutcome

__all__ = ["ChildProcessRunner", "outcome_from_message", "outcome_to_message"]


def outcome_to_message(outcome: StepOutcome) -> dict[str, Any]:
    """The JSON form of an outcome (the exception object itself stays behind)."""
    return {
        "status": outcome.status.value,
        "result": outcome.result,
        "error": None if outcome.error is None else outcome.error.model_dump(mode="json"),
    }


def outcome_from_message(message: dict[str, Any]) -> StepOutcome:
    """Rebuild an outcome from :func:`outcome_to_message`'s JSON."""
    error = message.get("error")
    return StepOutcome(
        Status(message["status"]),
        result=message.get("result"),
        error=None if error is None else StepError.model_validate(error),
    )


def _died(status: int) -> StepOutcome:
    if os.WIFSIGNALED(status):
        how = f"was killed by signal {os.WTERMSIG(status)}"
    else:
        how = f"exited with code {os.waitstatus_to_exitcode(status)}"
    return StepOutcome(
        Status.FAILED,
        error=StepError(
            type="StepProcessDied",
            message=f"The step's child process {how} before sending its outcome.",
        ),
    )


class _Child:
    """The child of one job: its pid once forked, and whether it was killed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.killed = False

    def was_killed(self) -> bool:
        with self.lock:
            return self.killed

    def kill(self) -> None:
        with self.lock:
            self.killed = True
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it has already exited
                    os.kill(self.pid, signal.SIGKILL)


class ChildProcessRunner:
    """Runs each sync step in a forked child process that can be killed."""

    def __init__(self) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError('sync_steps="process" needs os.fork (POSIX); use "thread" here.')

    def start(self, job: StepJob, done: Done) -> Callable[[], None]:
        """Start ``job`` in a child; the returned function kills the child."""
        child = _Child()
        thread = threading.Thread(
            target=self._supervise,
            args=(job, child, done),
            name=f"fuseline-child-{job.step.name}",
            daemon=True,
        )
        thread.start()
        return child.kill

    def close(self) -> None:
        """Nothing to release: each child is reaped by its own supervising thread."""

    def _supervise(self, job: StepJob, child: _Child, done: Done) -> None:
        read_end, write_end = os.pipe()
        with child.lock:
            if child.killed:
                os.close(read_end)
                os.close(write_end)
                done(None)
                return
            for stream in (sys.stdout, sys.stderr):
                # Unflushed output would otherwise be written by both processes.
                stream.flush()
            with warnings.catch_warnings():
                # The child only runs the step and exits; it never touches the
                # locks that other threads of the worker may hold.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which exits
                _child_main(job, read_end, write_end)
            child.pid = pid
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if child.was_killed():
            done(None)
        elif not data:
            done(_died(status))
        else:
            done(outcome_from_message(json.loads(data)))


def _child_main(job: StepJob, read_end: int, write_end: int) -> NoReturn:  # pragma: no cover
    code = 1
    try:
        os.close(read_end)
        # Ctrl-C reaches the whole process group; the worker decides what
        # happens to its children, so they ignore it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        message = outcome_to_message(job.execute())
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(json.dumps(message).encode())
        code = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # nothing sensible to do while exiting
                stream.flush()
        os._exit(code)
