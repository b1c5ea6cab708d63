"""``StepTimeoutPolicy``: give up on a step that runs too long."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from fuseline.errors import StepTimeoutError
from fuseline.jsonvalue import to_json_value
from fuseline.policies.base import StepPolicy

if TYPE_CHECKING:
    from fuseline.step import Step

__all__ = ["StepTimeoutPolicy"]


class StepTimeoutPolicy(StepPolicy):
    """Fail a step with :class:`~fuseline.errors.StepTimeoutError` after ``seconds``.

    The caller gets control back at the deadline in every mode:

    * async steps are cancelled at the deadline;
    * sync steps (``mode="thread"``, the default) run in a helper thread. At
      the deadline the step fails, but Python cannot stop a thread from the
      outside, so a body that never returns keeps running in the background
      until it ends on its own (its result is thrown away);
    * sync steps with ``mode="process"`` run in a forked child process that is
      killed at the deadline. Use it for code that can hang. The result comes
      back as JSON; an exception in the child comes back as ``RuntimeError``
      naming the original type. POSIX only.

    The broker also uses ``seconds`` for the step's lease deadline.
    """

    def __init__(self, seconds: float, *, mode: Literal["thread", "process"] = "thread") -> None:
        super().__init__()
        if not seconds > 0:
            raise ValueError(f"StepTimeoutPolicy needs a positive number of seconds, got {seconds}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        self.seconds = float(seconds)
        self.mode = mode

    def _timeout(self, step: Step) -> StepTimeoutError:
        return StepTimeoutError(
            f"Step {step.name!r} did not finish within {self.seconds:g} seconds.",
            details={"step": step.name, "timeout_seconds": self.seconds},
        )

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        """Run ``call`` with a deadline."""
        if self.mode == "process":
            return self._execute_in_child(step, call)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                outcome["result"] = call()
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=target, name=f"fuseline-step-{step.name}", daemon=True)
        worker.start()
        if not done.wait(self.seconds):
            raise self._timeout(step)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call`` with a deadline, cancelling it when the deadline passes."""
        try:
            return await asyncio.wait_for(call(), self.seconds)
        except TimeoutError:
            raise self._timeout(step) from None

    def _execute_in_child(self, step: Step, call: Callable[[], Any]) -> Any:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # Forking a threaded process is safe here: the child only runs the
            # step and writes one message before it exits.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            try:
                message = {"result": to_json_value(call(), what=f"result of step {step.name!r}")}
            except BaseException as exc:
                message = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(message))
            os._exit(0)
        os.close(write_end)
        try:
            data = self._read_until(read_end, time.monotonic() + self.seconds)
        finally:
            os.close(read_end)
        if data is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise self._timeout(step)
        os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"Step {step.name!r} died in its child process without a result")
        message = json.loads(data)
        if "error" in message:
            raise RuntimeError(message["error"])
        return message["result"]

    @staticmethod
    def _read_until(fd: int, deadline: float) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def schema_fields(self) -> dict[str, Any]:
        """Publish the timeout, which the broker uses for the lease deadline."""
        return {"timeout_seconds": self.seconds}

    def __repr__(self) -> str:
        return f"StepTimeoutPolicy({self.seconds:g})"
