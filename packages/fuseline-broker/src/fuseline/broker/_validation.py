"""What the broker accepts from callers, checked before any transaction starts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fuseline.errors import InvalidInputError, PayloadTooLargeError
from fuseline.jsonvalue import to_json_value
from fuseline.workflow import WorkflowSchema
from fuseline.workflow.schema import definition_error

__all__ = ["as_schema", "json_payload"]


def as_schema(workflow: Any) -> WorkflowSchema:
    """A ``WorkflowSchema`` from a schema, a ``Workflow`` or the schema's JSON data.

    Raises:
        WorkflowDefinitionError: The data describes an invalid graph (its subclass says how).
        InvalidInputError: Anything else that is not a schema.
    """
    if isinstance(workflow, WorkflowSchema):
        return workflow
    to_schema = getattr(workflow, "to_schema", None)
    if callable(to_schema):
        schema = to_schema()
        if isinstance(schema, WorkflowSchema):
            return schema
    if isinstance(workflow, Mapping):
        try:
            return WorkflowSchema.model_validate(workflow)
        except ValidationError as exc:
            raise definition_error(exc) from None
    raise InvalidInputError(
        f"Expected a WorkflowSchema (workflow.to_schema()), got {type(workflow).__name__}."
    )


def json_payload(value: Any, what: str, limit: int | None) -> Any:
    """``value`` as plain JSON data, at most ``limit`` bytes of compact JSON.

    Raises:
        ResultNotSerializableError: Not JSON (NaN, NUL characters, objects).
        PayloadTooLargeError: Over the limit.
    """
    plain = to_json_value(value, what=what)
    if limit is not None:
        size = len(json.dumps(plain, separators=(",", ":")).encode())
        if size > limit:
            raise PayloadTooLargeError(
                f"The {what} is {size} bytes of JSON, over the limit of {limit}; "
                "store large data elsewhere and pass a reference.",
                details={"size": size, "limit": limit},
            )
    return plain
