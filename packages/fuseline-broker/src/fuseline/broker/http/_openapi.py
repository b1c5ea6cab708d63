"""The OpenAPI 3.1 document, built from the route table and the pydantic models.

Robyn can generate a document too, but it cannot describe what this server
does (bodies parsed by us, error bodies, roles, 201s, long polls), so the
document is built here from the same route table the server registers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic.json_schema import models_json_schema

from fuseline.broker.http._config import ServerConfig
from fuseline.broker.http._errors import ERROR_STATUSES
from fuseline.broker.http._routes import ROUTES, Endpoint
from fuseline.clients.wire import IDEMPOTENCY_HEADER, IDEMPOTENCY_KEY_PATTERN, ErrorBody

__all__ = ["DOCS_PAGE", "build_openapi", "openapi_json"]

_REF = "#/components/schemas/{model}"
_Mode = Literal["validation", "serialization"]

# Text may hold any character but NUL, which the databases cannot store; the
# server refuses it with a 4xx, so the document says so.
NO_NUL = "^[^\\x00]*$"
_JSON_VALUE = "JsonValue"
_SCHEMA_KEYS = ("type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const", "not", "properties")

_STATUS_TEXT = {
    400: "The body is not a JSON object (malformed JSON, NaN, NUL characters, not UTF-8).",
    401: "No valid bearer token.",
    403: "The token's role may not use this route.",
    404: "No such worker, run or workflow.",
    409: "Conflicts with the current state (lease, schema, idempotency key, finished run).",
    413: "The body, a result, the inputs or a schema is over the server's limits.",
    422: "Well-formed JSON that does not fit the model (unknown fields, wrong types...).",
    503: "The broker's database cannot be reached right now; try again.",
}


def _models() -> list[tuple[type[pydantic.BaseModel], _Mode]]:
    pairs: list[tuple[type[pydantic.BaseModel], _Mode]] = [(ErrorBody, "serialization")]
    for endpoint in ROUTES:
        pairs.append((endpoint.response, "serialization"))
        if endpoint.body is not None:
            pairs.append((endpoint.body, "validation"))
        if endpoint.query is not None:
            pairs.append((endpoint.query, "validation"))
    return list(dict.fromkeys(pairs))  # each model once, in order


def _json_value_schema() -> dict[str, Any]:
    ref = {"$ref": _REF.format(model=_JSON_VALUE)}
    return {
        "description": "Any JSON value whose strings and keys hold no NUL character.",
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "number"},
            {"type": "string", "pattern": NO_NUL},
            {"type": "array", "items": ref},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": ref},
        ],
    }


def _is_any(schema: dict[str, Any]) -> bool:
    return not any(key in schema for key in (*_SCHEMA_KEYS, "items", "prefixItems"))


def forbid_nul(schema: Any) -> Any:
    """Return ``schema`` with every string and free-form value described as NUL-free."""
    if not isinstance(schema, dict):
        return schema
    if _is_any(schema):
        return {**schema, "$ref": _REF.format(model=_JSON_VALUE)}
    out = dict(schema)
    if out.get("type") == "string" and not {"pattern", "enum", "const", "format"} & out.keys():
        out["pattern"] = NO_NUL
    for key in ("properties", "$defs"):
        if isinstance(out.get(key), dict):
            out[key] = {name: forbid_nul(sub) for name, sub in out[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [forbid_nul(sub) for sub in out[key]]
    for key in ("items", "not"):
        if isinstance(out.get(key), dict):
            out[key] = forbid_nul(out[key])
    extra = out.get("additionalProperties")
    if out.get("type") == "object" and extra is not None and extra is not False:
        out["propertyNames"] = {"pattern": NO_NUL}
        out["additionalProperties"] = forbid_nul(extra if isinstance(extra, dict) else {})
    return out


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    # Optional query parameters are simply left out; "null" is not a value a
    # query string can carry, so the document does not offer it.
    options = schema.get("anyOf")
    if isinstance(options, list):
        concrete = [o for o in options if o != {"type": "null"}]
        if len(concrete) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**concrete[0], **merged}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _without_null(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT.get(status, "Error."),
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
    }


def _error_statuses(endpoint: Endpoint, config: ServerConfig) -> list[int]:
    statuses = set(endpoint.errors) | {413, 422}
    if endpoint.roles is not None:
        statuses.add(503)
        if config.auth_enabled:
            statuses |= {401, 403}
    if endpoint.body is not None:
        statuses.add(400)
    if endpoint.path_params:
        statuses.add(404)
    return sorted(statuses)


def _operation(
    endpoint: Endpoint,
    config: ServerConfig,
    refs: Mapping[tuple[Any, _Mode], dict[str, Any]],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_NUL},
        }
        for name in endpoint.path_params
    ]
    if endpoint.query is not None:
        name = refs[(endpoint.query, "validation")]["$ref"].rsplit("/", 1)[1]
        parameters += _query_parameters(schemas.pop(name))
    if endpoint.operation_id == "dispatchRun":
        parameters.append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "Repeating a dispatch with the same key returns the same run.",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "pattern": IDEMPOTENCY_KEY_PATTERN,
                },
            }
        )
    success: dict[str, Any] = {
        "description": endpoint.summary,
        "content": {"application/json": {"schema": refs[(endpoint.response, "serialization")]}},
    }
    if endpoint.status == 201 and endpoint.operation_id == "dispatchRun":
        success["headers"] = {
            "Location": {"description": "The run's URL.", "schema": {"type": "string"}}
        }
    if endpoint.links:
        success["links"] = {
            name: {
                "operationId": operation_id,
                "parameters": {parameter: f"$response.body#/{field}"},
            }
            for name, operation_id, parameter, field in endpoint.links
        }
    responses: dict[str, Any] = {str(endpoint.status): success}
    for status in _error_statuses(endpoint, config):
        responses[str(status)] = _error_response(status)
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": responses,
    }
    description = endpoint.description
    if endpoint.roles is not None:
        roles = " or ".join(sorted(endpoint.roles))
        description = f"{description}\n\nToken role: {roles}.".strip()
        if config.auth_enabled:
            operation["security"] = [{"bearerAuth": []}]
    else:
        operation["security"] = []
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        media: dict[str, Any] = {"schema": refs[(endpoint.body, "validation")]}
        if endpoint.example is not None:
            media["example"] = endpoint.example
        operation["requestBody"] = {
            "required": not endpoint.body_optional,
            "content": {"application/json": media},
        }
    return operation


def build_openapi(config: ServerConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server, as plain data."""
    from fuseline import __version__

    refs, top = models_json_schema(_models(), ref_template=_REF)
    schemas: dict[str, Any] = {
        name: forbid_nul(schema) for name, schema in top.get("$defs", {}).items()
    }
    schemas[_JSON_VALUE] = _json_value_schema()
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ROUTES:
        operation = _operation(endpoint, config, refs, schemas)
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    codes = sorted({cls.code for cls, _ in ERROR_STATUSES})
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Fuseline broker API",
            "version": __version__,
            "description": (
                "Workers register, claim steps and report; applications dispatch and read "
                "runs. Every error body is `ErrorBody`; `error.code` is stable "
                f"(for example {', '.join(codes[:6])}...). Limits of this server: bodies up "
                f"to {config.limits.max_body_bytes} bytes, results and inputs up to "
                f"{config.limits.max_result_bytes} bytes of JSON, "
                f"{config.limits.max_schema_steps} steps per schema, long polls up to "
                f"{config.limits.max_wait_seconds:g} s."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if config.auth_enabled:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"}
        }
    return document


def openapi_json(config: ServerConfig) -> bytes:
    """The document as JSON bytes."""
    return json.dumps(build_openapi(config), separators=(",", ":")).encode()


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fuseline broker API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<div id="api"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
  // A relative URL keeps working behind a reverse proxy that adds a prefix.
  window.addEventListener("load", function () {
    SwaggerUIBundle({url: "openapi.json", dom_id: "#api"});
  });
</script>
</body>
</html>
"""
