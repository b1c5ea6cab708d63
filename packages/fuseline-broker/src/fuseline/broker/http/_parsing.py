"""Turning the raw pieces of a request into validated models, or a 4xx.

Bodies are parsed twice on purpose: first by the standard library, which
refuses what JSON does not allow (NaN, Infinity, trailing garbage) and lets
us refuse NUL characters, then by pydantic in strict mode against the route's
model, which refuses unknown fields and wrong types.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import unquote, unquote_plus

import pydantic

from fuseline.broker.http._errors import HttpError
from fuseline.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ResultNotSerializableError,
)
from fuseline.jsonvalue import check_json_text
from fuseline.workflow.schema import definition_error

__all__ = [
    "check_size",
    "json_size",
    "parse_body",
    "parse_path_param",
    "parse_query",
]

M = TypeVar("M", bound=pydantic.BaseModel)

_MAX_ERRORS_SHOWN = 20


def _bad_request(message: str, **details: Any) -> HttpError:
    return HttpError(400, InvalidInputError(message, details=details))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send null or a string instead")


def _validation_error(exc: pydantic.ValidationError, what: str) -> HttpError:
    cause = definition_error(exc)
    if type(cause) is not InvalidInputError:
        # A workflow graph problem: keep its own code (workflow_cycle...).
        return HttpError(422, cause)
    errors = [
        {
            "loc": [str(part) for part in error["loc"]],
            "msg": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    shown = errors[:_MAX_ERRORS_SHOWN]
    summary = "; ".join(f"{'.'.join(e['loc']) or what}: {e['msg']}" for e in shown[:3])
    return HttpError(
        422,
        InvalidInputError(
            f"Invalid {what}: {summary}",
            details={"errors": shown, "error_count": len(errors)},
        ),
    )


def check_size(raw: str | bytes, max_bytes: int) -> None:
    """Refuse a body over ``max_bytes`` bytes.

    Raises:
        HttpError: 413.
    """
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise HttpError(
            413,
            PayloadTooLargeError(
                f"The request body has {size} bytes; this broker accepts at most {max_bytes}.",
                details={"size": size, "limit": max_bytes},
            ),
        )


def _check_nul(text: str) -> None:
    try:
        check_json_text(text, "request body")
    except ResultNotSerializableError:
        raise _bad_request(
            "The request body contains a NUL character (\\u0000), which cannot be stored; "
            "remove it."
        ) from None


def parse_body(raw: str | bytes, model: type[M], max_bytes: int, *, empty_ok: bool) -> M:
    """Validate a JSON request body against ``model``.

    Args:
        raw: The body as the server received it.
        model: The route's request model.
        max_bytes: Largest body accepted.
        empty_ok: Treat an empty body as ``{}`` (routes whose fields all have
            defaults).

    Raises:
        HttpError: 413 for a body over the limit, 400 for anything that is not
            a JSON object, 422 for an object that does not fit ``model``.
    """
    check_size(raw, max_bytes)
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("The request body is not UTF-8 text; send JSON.") from None
    else:
        text = raw
    if not text.strip():
        if not empty_ok:
            raise _bad_request("The request needs a JSON object body.")
        text = "{}"
    if "NaN" not in text and "Infinity" not in text:
        # The common case, in one pass: pydantic parses and validates at
        # once. It would accept NaN and Infinity, hence the test above; and
        # when it refuses the body, the full path below says exactly why.
        try:
            parsed = model.model_validate_json(text, strict=True)
        except pydantic.ValidationError:
            pass
        else:
            _check_nul(text)
            return parsed
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _bad_request("The request body is nested too deeply.") from None
    except ValueError as exc:
        raise _bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _bad_request(f"The request body must be a JSON object, not {type(value).__name__}.")
    _check_nul(text)
    try:
        return model.model_validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, "request body") from None


def parse_query(raw: dict[str, list[str]], model: type[M]) -> M:
    """Validate query parameters (still percent-encoded) against ``model``.

    Raises:
        HttpError: 422 for unknown, repeated or invalid parameters.
    """
    values: dict[str, str] = {}
    for raw_name, raw_values in raw.items():
        name = unquote_plus(raw_name)
        decoded = [unquote_plus(v) for v in raw_values]
        if len(decoded) != 1 or name in values:
            raise HttpError(422, InvalidInputError(f"Give the query parameter {name!r} once."))
        if "\x00" in name or "\x00" in decoded[0]:
            raise HttpError(422, InvalidInputError("Query parameters cannot hold NUL characters."))
        values[name] = decoded[0]
    try:
        # Lax mode: query strings carry text, so "10" must become 10.
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, "query") from None


def parse_path_param(raw: str, error: type[NotFoundError], what: str) -> str:
    """Decode one path segment.

    Raises:
        HttpError: 404 with ``error`` when it cannot name anything (empty,
            NUL, longer than any id).
    """
    value = unquote(raw)
    if not value or "\x00" in value or len(value) > 200:
        raise HttpError(404, error(f"No {what} {value[:200]!r} exists."))
    return value


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what the limits measure)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
