"""Finding the workflows a worker command names as ``module:attribute``.

The names come from the worker's own command line (local configuration the
operator wrote), never from the network: a broker cannot make a worker import
anything.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from fuseline.errors import InvalidInputError
from fuseline.workflow import Workflow

__all__ = ["load_workflows"]


def load_workflows(specs: Iterable[str]) -> list[Workflow]:
    """Import each ``module:attribute`` and return the workflows they name, in order.

    ``attribute`` may be dotted (``pkg.flows:registry.main``) and may name one
    ``Workflow`` or a list or tuple of them. The current directory is searched
    first, as ``python -m`` does, so a worker started next to its code finds it.

    Raises:
        InvalidInputError: A spec is malformed, cannot be imported, or does not
            name workflows.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[Workflow] = []
    for spec in specs:
        found.extend(_load_one(spec))
    if not found:
        raise InvalidInputError("Name at least one workflow to run, as module:attribute.")
    return found


def _load_one(spec: str) -> list[Workflow]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidInputError(
            f"{spec!r} does not name a workflow; write it as module:attribute, "
            "e.g. my_app.flows:workflow."
        )
    try:
        value: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(
            f"Cannot import module {module_name!r} for {spec!r}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InvalidInputError(
                f"{spec!r}: {module_name!r} has no attribute {attribute!r}."
            ) from None
    if isinstance(value, Workflow):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(w, Workflow) for w in value):
        return list(value)
    raise InvalidInputError(
        f"{spec!r} is a {type(value).__name__}, not a Workflow or a list of Workflows."
    )
