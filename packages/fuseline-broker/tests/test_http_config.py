"""The server's pieces without a network: settings, storage URLs, tokens, the
request pipeline and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fuseline.broker.http import ConfigError, ServerConfig, build_openapi, parse_config
from fuseline.broker.http._auth import CLIENT, WORKER, TokenCheck
from fuseline.broker.http._pipeline import Service
from fuseline.broker.http._routes import ROUTES
from fuseline.broker.http._storage import DEFAULT_SQLITE_FILE, storage_target
from fuseline.errors import AuthenticationError, PermissionDeniedError

TOKEN_A = "a" * 24
TOKEN_B = "b" * 24


# -- settings ------------------------------------------------------------------------


def test_defaults_listen_on_loopback_without_tokens() -> None:
    config = parse_config([], {})
    assert (config.host, config.port, config.processes) == ("127.0.0.1", 8000, 1)
    assert not config.auth_enabled and config.loopback_only
    assert config.database_url is None


def test_flags_win_over_the_environment() -> None:
    env = {"FUSELINE_PORT": "9000", "FUSELINE_PROCESSES": "4", "DATABASE_URL": "sqlite:///x.db"}
    assert (parse_config([], env).port, parse_config([], env).processes) == (9000, 4)
    config = parse_config(
        ["--port", "9100", "--database-url", "memory://", "--processes", "1"], env
    )
    assert (config.port, config.processes, config.database_url) == (9100, 1, "memory://")


def test_broker_settings_reach_the_broker(tmp_path: Path) -> None:
    from fuseline.broker.http._storage import open_broker

    env = {
        "FUSELINE_DEFAULT_LEASE_SECONDS": "12.5",
        "FUSELINE_RETENTION_DAYS": "7",
        "FUSELINE_POLL_INTERVAL_SECONDS": "2.5",
    }
    config = parse_config(["--max-attempts", "5"], env)
    assert (config.default_lease, config.max_attempts, config.retention_days) == (12.5, 5, 7.0)
    broker = open_broker(storage_target(f"sqlite:///{tmp_path / 'b.db'}"), config)
    try:
        assert broker.default_lease == 12.5  # type: ignore[attr-defined]
        assert broker.default_max_attempts == 5  # type: ignore[attr-defined]
        assert broker.retention == 7 * 86400  # type: ignore[attr-defined]
        assert broker.storage.poll_interval == 2.5  # type: ignore[attr-defined]
    finally:
        broker.close()
    defaults = parse_config([], {})
    assert (defaults.default_lease, defaults.max_attempts, defaults.retention_days) == (
        30.0,
        3,
        None,
    )
    assert defaults.poll_interval == 5.0


def test_tokens_come_from_flags_variables_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "client-token"
    secret.write_text(TOKEN_B + "\n")
    env = {
        "FUSELINE_WORKER_TOKEN": f"{TOKEN_A}, {'c' * 20}",
        "FUSELINE_CLIENT_TOKEN_FILE": str(secret),
        "FUSELINE_TOKEN": "d" * 20,
    }
    config = parse_config(["--worker-token", "e" * 20], env)
    assert config.worker_tokens == ("e" * 20, TOKEN_A, "c" * 20, "d" * 20)
    assert config.client_tokens == (TOKEN_B, "d" * 20)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--host", "0.0.0.0"], {}, "without tokens"),  # noqa: S104 - refused on purpose
        (["--processes", "2", "--database-url", "memory://"], {}, "one process"),
        ([], {"FUSELINE_WORKER_TOKEN": "short"}, "shorter than 16"),
        ([], {"FUSELINE_CLIENT_TOKEN": "has a space in it ok"}, "spaces"),
        (["--port", "0"], {}, "--port"),
        (["--max-wait", "61"], {}, "--max-wait"),
        (["--default-lease", "0"], {}, "--default-lease"),
        (["--max-attempts", "0"], {}, "--max-attempts"),
        ([], {"FUSELINE_RETENTION_DAYS": "-1"}, "--retention-days"),
        (["--poll-interval", "0"], {}, "--poll-interval"),
        (["--max-result-bytes", "99999999999"], {}, "--max-result-bytes"),
        (["--log-level", "chatty"], {}, "--log-level"),
        ([], {"FUSELINE_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
    ],
)
def test_unsafe_or_impossible_settings_are_refused(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, env)


def test_beyond_loopback_with_tokens_or_explicit_consent() -> None:
    everywhere = "0.0.0.0"  # noqa: S104 - allowed here, with a token or consent
    assert parse_config(["--host", everywhere], {"FUSELINE_TOKEN": TOKEN_A}).auth_enabled
    consent = parse_config(["--host", everywhere, "--allow-unauthenticated-remote"], {})
    assert consent.allow_unauthenticated_remote and not consent.auth_enabled


# -- storage -------------------------------------------------------------------------


def test_storage_urls(tmp_path: Path) -> None:
    default = storage_target(None, tmp_path)
    assert default.kind == "sqlite"
    assert default.location == str(tmp_path / DEFAULT_SQLITE_FILE)
    assert str(tmp_path) in default.description
    assert storage_target("sqlite:///var/x.db").location == "/var/x.db"
    assert storage_target("sqlite:rel.db", tmp_path).location == str(tmp_path / "rel.db")
    assert storage_target("memory://").kind == "memory"
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        storage_target("mysql://db")


def test_postgres_descriptions_never_show_the_password() -> None:
    target = storage_target("postgresql://app:s3cret@db.internal:6432/flows?sslmode=require")
    assert target.kind == "postgresql"
    assert target.location.startswith("postgresql://app:s3cret@")  # the driver needs it
    assert target.description == "PostgreSQL at app@db.internal:6432/flows"
    assert "s3cret" not in storage_target("postgres://:s3cret@db/x").description


# -- tokens --------------------------------------------------------------------------


def test_token_roles() -> None:
    check = TokenCheck([TOKEN_A], [TOKEN_B])
    check.require(f"Bearer {TOKEN_A}", WORKER)
    check.require(f"bearer   {TOKEN_B}", CLIENT)
    with pytest.raises(PermissionDeniedError, match="client"):
        check.require(f"Bearer {TOKEN_A}", CLIENT)
    for header in (None, "", f"Basic {TOKEN_A}", "Bearer", f"Bearer {TOKEN_A}x"):
        with pytest.raises(AuthenticationError):
            check.require(header, WORKER)
    both = TokenCheck([TOKEN_A], [TOKEN_A])
    both.require(f"Bearer {TOKEN_A}", CLIENT)
    TokenCheck([], []).require(None, CLIENT)  # no tokens: every role


# -- the request pipeline ------------------------------------------------------------


class ExplodingBroker:
    """A broker whose every call fails in a way no request could cause."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internal detail: disk on fire")

        return fail


def answer(service: Service, operation: str, **request: Any) -> Any:
    endpoint = next(e for e in ROUTES if e.operation_id == operation)
    request.setdefault("headers", {})
    request.setdefault("path_params", {})
    request.setdefault("query", {})
    request.setdefault("body", "")
    return asyncio.run(service.handle(endpoint, **request))


def test_a_bug_behind_a_route_is_a_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    service = Service(ServerConfig(), ExplodingBroker(), "memory")
    try:
        result = answer(service, "listWorkers")
    finally:
        service.pools.shutdown()
    assert result.status == 500
    body = json.loads(result.body)
    assert body["error"]["code"] == "internal_error"
    assert "disk on fire" not in result.body.decode()
    assert "disk on fire" in caplog.text  # the operator still learns what happened


def test_requests_after_stop_began_are_sent_elsewhere() -> None:
    service = Service(ServerConfig(), ExplodingBroker(), "memory")
    service.state.stopping.set()
    try:
        result = answer(service, "listWorkers")
    finally:
        service.pools.shutdown()
    assert result.status == 503
    assert json.loads(result.body)["error"]["code"] == "unavailable"
    assert result.headers["Retry-After"] == "1"


# -- the OpenAPI document ------------------------------------------------------------


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def test_the_document_describes_every_route_and_resolves_every_reference() -> None:
    document = build_openapi(parse_config([], {"FUSELINE_TOKEN": TOKEN_A}))
    assert document["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert set(operations) == {(e.method, e.path) for e in ROUTES}
    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    for endpoint in ROUTES:
        op = operations[(endpoint.method, endpoint.path)]
        assert str(endpoint.status) in op["responses"]
        if endpoint.roles is None:
            assert op["security"] == []
        else:
            assert op["security"] == [{"bearerAuth": []}]
            assert {"401", "403"} <= op["responses"].keys()
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }


def test_strings_in_the_document_exclude_nul() -> None:
    schemas = build_openapi(ServerConfig())["components"]["schemas"]
    step_name = schemas["StepReport"]["properties"]["step_name"]
    assert step_name["pattern"] == "^[^\\x00]*$"
    assert schemas["StepReport"]["properties"]["result"]["$ref"].endswith("/JsonValue")
    assert "anyOf" in schemas["JsonValue"]
