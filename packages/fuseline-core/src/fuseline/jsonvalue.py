"""Turning step results and workflow inputs into plain JSON values.

Results travel between steps as JSON whether the workflow runs in-process or
through a broker, so both paths see exactly the same values: a step that
returns something JSON cannot carry fails in-process too, not only once it is
deployed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic
from pydantic_core import PydanticSerializationError

from fuseline.errors import ResultNotSerializableError

__all__ = ["JSONValue", "check_json_text", "to_json_value"]

JSONValue = Any
"""A value made only of dict (str keys), list, str, int, float, bool and None."""

# Keep NaN and infinity as floats so that the JSON check below rejects them
# instead of pydantic quietly turning them into null.
_ANY_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    Any, config=pydantic.ConfigDict(ser_json_inf_nan="constants")
)
# An escaped NUL that is not itself preceded by an escaping backslash.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def to_json_value(value: Any, *, what: str = "value") -> JSONValue:
    """Return ``value`` as plain JSON data (pydantic models, dataclasses, dates...).

    Args:
        value: Any object pydantic can serialize.
        what: How to name the value in an error message, e.g. "result of step 'a'".

    Raises:
        ResultNotSerializableError: The value cannot be JSON, contains NaN or
            infinity, or contains a NUL character (which PostgreSQL cannot store).
    """
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and "\x00" in value:
            raise ResultNotSerializableError(f"The {what} contains a NUL character; remove it.")
        return value
    try:
        plain = _ANY_ADAPTER.dump_python(value, mode="json")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ResultNotSerializableError(
            f"The {what} of type {type(value).__name__} cannot be turned into JSON: {exc}. "
            "Return JSON-compatible data (dict, list, str, numbers, bool, None), "
            "a pydantic model or a dataclass."
        ) from exc
    check_json_text(_dumps(plain, what), what)
    return plain


def _dumps(plain: Any, what: str) -> str:
    try:
        return json.dumps(plain, allow_nan=False)
    except ValueError as exc:
        raise ResultNotSerializableError(
            f"The {what} contains NaN or infinity, which JSON cannot carry; use null or a string."
        ) from exc
    except TypeError as exc:
        raise ResultNotSerializableError(f"The {what} cannot be turned into JSON: {exc}.") from exc


def check_json_text(text: str, what: str = "value") -> None:
    """Reject JSON text that holds a NUL character.

    Raises:
        ResultNotSerializableError: The text holds an escaped NUL.
    """
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ResultNotSerializableError(f"The {what} contains a NUL character; remove it.")
