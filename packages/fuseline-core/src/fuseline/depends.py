"""``Depends``: wiring a step parameter to another step's result."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fuseline.conditions import Condition

if TYPE_CHECKING:
    from fuseline.step import Step

__all__ = ["Depends"]


class Depends:
    """Default value of a ``run_step`` parameter that receives another step's result.

    ``Depends(a)`` adds the edge ``a >> step`` and binds ``a``'s result to the
    parameter. ``Depends(a, b)`` (or ``Depends([a, b])``) is an OR group: the
    step runs once, as soon as one of ``a`` and ``b`` succeeds, and the
    parameter receives the result of the member that succeeded first.

    Args:
        *steps: The step, or several steps (an OR group), or one list of steps.
        condition: Evaluated with the dependency's result just before the step
            runs; when false the step is SKIPPED. A plain callable is wrapped
            in a :class:`~fuseline.Condition`.
    """

    def __init__(
        self,
        *steps: Step | Iterable[Step],
        condition: Condition | Callable[[Any], object] | None = None,
    ) -> None:
        flat: list[Any] = []
        for item in steps:
            if isinstance(item, (list, tuple, set, frozenset)):
                flat.extend(item)
            else:
                flat.append(item)
        self.steps: tuple[Any, ...] = tuple(flat)
        if condition is not None and not isinstance(condition, Condition):
            condition = Condition(condition)
        self.condition: Condition | None = condition

    @property
    def is_or_group(self) -> bool:
        """Whether this dependency names several steps (an OR group)."""
        return len(self.steps) > 1

    def __repr__(self) -> str:
        names = ", ".join(getattr(s, "name", repr(s)) for s in self.steps)
        return f"Depends({names})"
