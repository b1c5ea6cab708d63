"""Conditions: decide, just before a step runs, whether it runs at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Condition"]


class Condition:
    """A yes/no question about a dependency's result.

    A condition is attached with ``Depends(step, condition=...)`` and is
    evaluated where the step runs (in-process or on the worker), with the
    dependency's result as its argument. When it answers no, the step is
    SKIPPED and the skip cascades like an unchosen branch.

    Build one from a function, or subclass it and override :meth:`check`::

        Condition(lambda score: score > 0.5)
        Condition.equals("ok")

    Conditions combine with ``&``, ``|`` and ``~``.
    """

    def __init__(
        self, predicate: Callable[[Any], object] | None = None, *, description: str | None = None
    ) -> None:
        self._predicate = predicate
        self.description = description or getattr(predicate, "__name__", type(self).__name__)

    def check(self, value: Any) -> bool:
        """Return whether the step should run given its dependency's ``value``."""
        if self._predicate is None:
            raise NotImplementedError(
                f"{type(self).__name__} needs a predicate or an overridden check()"
            )
        return bool(self._predicate(value))

    def __call__(self, value: Any) -> bool:
        """Evaluate the condition for ``value``."""
        return bool(self.check(value))

    def __and__(self, other: Condition) -> Condition:
        return Condition(
            lambda v: self(v) and other(v),
            description=f"({self.description} and {other.description})",
        )

    def __or__(self, other: Condition) -> Condition:
        return Condition(
            lambda v: self(v) or other(v),
            description=f"({self.description} or {other.description})",
        )

    def __invert__(self) -> Condition:
        return Condition(lambda v: not self(v), description=f"not {self.description}")

    def __repr__(self) -> str:
        return f"Condition({self.description})"

    @classmethod
    def equals(cls, expected: Any) -> Condition:
        """Run the step only when the dependency's result equals ``expected``."""
        return cls(lambda v: v == expected, description=f"== {expected!r}")

    @classmethod
    def is_truthy(cls) -> Condition:
        """Run the step only when the dependency's result is truthy."""
        return cls(bool, description="is truthy")
