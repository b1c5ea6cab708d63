"""``RetryPolicy``: run a failing step again, with waits that can grow."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from fuseline.policies.base import StepPolicy
from fuseline.policies.stopping import step_should_stop
from fuseline.workflow.schema import RetrySchema

if TYPE_CHECKING:
    from fuseline.step import Step

__all__ = ["RetryPolicy"]


class RetryPolicy(StepPolicy):
    """Retry a step that raised, up to ``max_retries`` more times.

    The wait before retry ``n`` (1-based) is ``wait * backoff ** (n - 1)``,
    capped at ``max_wait``, plus a random extra of up to ``jitter`` seconds.
    With the defaults every retry waits ``wait`` seconds.

    Args:
        max_retries: Retries after the first attempt (so ``max_retries + 1`` attempts).
        wait: Seconds to wait before the first retry.
        backoff: Multiplier applied to the wait after each retry (1 keeps it fixed).
        max_wait: Upper bound of a single wait, before jitter.
        jitter: Up to this many random seconds added to each wait.
        retry_on: Exception types worth retrying; others fail at once.
    """

    outermost = True

    def __init__(
        self,
        max_retries: int = 3,
        wait: float = 0.0,
        *,
        backoff: float = 1.0,
        max_wait: float | None = None,
        jitter: float = 0.0,
        retry_on: type[BaseException] | Iterable[type[BaseException]] = Exception,
    ) -> None:
        super().__init__()
        self.config = RetrySchema(
            max_retries=max_retries, wait=wait, backoff=backoff, max_wait=max_wait, jitter=jitter
        )
        self.retry_on: tuple[type[BaseException], ...] = (
            (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
        )

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt."""
        return self.config.max_retries

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        cfg = self.config
        seconds = cfg.wait * cfg.backoff ** (retry - 1)
        if cfg.max_wait is not None:
            seconds = min(seconds, cfg.max_wait)
        if cfg.jitter:
            seconds += random.uniform(0, cfg.jitter)  # noqa: S311 - spreading load, not security
        return seconds

    def _should_retry(self, exc: BaseException, retry: int) -> bool:
        # A worker that lost the step's lease says so through step_should_stop:
        # another worker runs the step now, so a retry here would run it twice.
        return (
            retry <= self.config.max_retries
            and isinstance(exc, self.retry_on)
            and not step_should_stop()
        )

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        """Call ``call`` until it returns or the retries are used up."""
        retry = 0
        while True:
            try:
                return call()
            except Exception as exc:
                retry += 1
                if not self._should_retry(exc, retry):
                    raise
                time.sleep(self.delay(retry))
                if step_should_stop():
                    raise

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call`` until it returns or the retries are used up."""
        retry = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                retry += 1
                if not self._should_retry(exc, retry):
                    raise
                await asyncio.sleep(self.delay(retry))

    def schema_fields(self) -> dict[str, Any]:
        """Publish the attempt limit and backoff settings."""
        return {"max_attempts": self.config.max_retries + 1, "retry": self.config}

    def __repr__(self) -> str:
        return f"RetryPolicy(max_retries={self.max_retries}, wait={self.config.wait})"
