"""The server's settings, read from command-line flags and environment variables.

A flag wins over its environment variable, which wins over the default. The
checks that protect a deployment (tokens before listening beyond loopback,
one process for the memory backend) run here, before anything starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConfigError", "Limits", "ServerConfig", "parse_config"]

MIN_TOKEN_LENGTH = 16


class ConfigError(ValueError):
    """The settings cannot work; the message says which one and why."""


@dataclass(frozen=True)
class Limits:
    """Sizes the server refuses to go beyond (each refusal is a 4xx, never a crash).

    Attributes:
        max_body_bytes: Largest request body.
        max_result_bytes: Largest step result, and largest set of run inputs,
            measured as compact JSON.
        max_schema_steps: Most steps in one workflow schema.
        max_wait_seconds: Longest a long poll (claim or run wait) is held.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    max_schema_steps: int = 1000
    max_wait_seconds: float = 30.0


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``python -m fuseline.broker.http`` needs to know.

    Attributes:
        host: Address to listen on.
        port: TCP port.
        database_url: ``None`` for the SQLite file in the working directory,
            ``memory://``, ``sqlite:///path.db`` or ``postgresql://...``.
        processes: Server processes sharing the port.
        log_level: Python logging level name.
        worker_tokens: Bearer tokens with the worker role.
        client_tokens: Bearer tokens with the client role.
        allow_unauthenticated_remote: Listen beyond loopback without tokens.
        limits: Size and time limits.
        threads: Threads per process for database calls.
        max_waiters: Threads per process for long polls.
        shutdown_grace: Seconds requests in flight get to finish on shutdown.
        docs: Serve ``/openapi.json`` and ``/docs``.
        default_lease: Lease of a step without a timeout, in seconds.
        max_attempts: Hand-outs of a step without a retry policy before an
            expired lease fails it.
        retention_days: Delete finished runs older than this; None keeps them.
        poll_interval: Seconds a waiting long poll relies on the wake-up
            signals (``NOTIFY``, the SQLite file watch) before it looks at the
            database itself.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    processes: int = 1
    log_level: str = "INFO"
    worker_tokens: tuple[str, ...] = ()
    client_tokens: tuple[str, ...] = ()
    allow_unauthenticated_remote: bool = False
    limits: Limits = field(default_factory=Limits)
    threads: int = 32
    max_waiters: int = 256
    shutdown_grace: float = 5.0
    docs: bool = True
    default_lease: float = 30.0
    max_attempts: int = 3
    retention_days: float | None = None
    poll_interval: float = 5.0

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry a bearer token."""
        return bool(self.worker_tokens or self.client_tokens)

    @property
    def loopback_only(self) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tokens(*values: str | None) -> tuple[str, ...]:
    found: list[str] = []
    for value in values:
        for token in (value or "").split(","):
            token = token.strip()
            if token and token not in found:
                found.append(token)
    return tuple(found)


def _read_secret_file(path: str | None, variable: str) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _check_tokens(tokens: tuple[str, ...], what: str) -> None:
    for token in tokens:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"A {what} token is shorter than {MIN_TOKEN_LENGTH} characters; use a long "
                'random one, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))".'
            )
        if any(c.isspace() or ord(c) < 32 or ord(c) > 126 for c in token):
            raise ConfigError(f"A {what} token holds spaces or non-ASCII characters.")


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str | None) -> str | None:
        return env.get(name) or fallback

    parser = argparse.ArgumentParser(
        prog="python -m fuseline.broker.http",
        description="Serve a Fuseline broker over HTTP (JSON API under /v1).",
        epilog="Every flag has an environment variable; flags win. See docs/deployment.md.",
    )
    parser.add_argument(
        "--host", default=default("FUSELINE_HOST", "127.0.0.1"), help="FUSELINE_HOST"
    )
    parser.add_argument(
        "--port", type=int, default=default("FUSELINE_PORT", "8000"), help="FUSELINE_PORT"
    )
    parser.add_argument(
        "--database-url",
        default=default("DATABASE_URL", None),
        help="DATABASE_URL: postgresql://..., sqlite:///path.db or memory:// "
        "(default: fuseline-broker.sqlite3 in the working directory)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=default("FUSELINE_PROCESSES", "1"),
        help="FUSELINE_PROCESSES: server processes sharing the port",
    )
    parser.add_argument(
        "--log-level", default=default("FUSELINE_LOG_LEVEL", "INFO"), help="FUSELINE_LOG_LEVEL"
    )
    parser.add_argument(
        "--worker-token",
        action="append",
        default=[],
        help="a token with the worker role (repeatable; prefer FUSELINE_WORKER_TOKEN, "
        "since flags show up in process lists)",
    )
    parser.add_argument(
        "--client-token",
        action="append",
        default=[],
        help="a token with the client role (repeatable; prefer FUSELINE_CLIENT_TOKEN)",
    )
    parser.add_argument(
        "--allow-unauthenticated-remote",
        action="store_true",
        default=env.get("FUSELINE_ALLOW_UNAUTHENTICATED_REMOTE", "") not in ("", "0"),
        help="listen beyond loopback without tokens (FUSELINE_ALLOW_UNAUTHENTICATED_REMOTE=1)",
    )
    limits = Limits()
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=default("FUSELINE_MAX_BODY_BYTES", str(limits.max_body_bytes)),
        help="FUSELINE_MAX_BODY_BYTES",
    )
    parser.add_argument(
        "--max-result-bytes",
        type=int,
        default=default("FUSELINE_MAX_RESULT_BYTES", str(limits.max_result_bytes)),
        help="FUSELINE_MAX_RESULT_BYTES: largest step result or set of run inputs",
    )
    parser.add_argument(
        "--max-schema-steps",
        type=int,
        default=default("FUSELINE_MAX_SCHEMA_STEPS", str(limits.max_schema_steps)),
        help="FUSELINE_MAX_SCHEMA_STEPS",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=default("FUSELINE_MAX_WAIT_SECONDS", str(limits.max_wait_seconds)),
        help="FUSELINE_MAX_WAIT_SECONDS: longest long poll, at most 60",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default("FUSELINE_THREADS", "32"),
        help="FUSELINE_THREADS: threads per process for database calls",
    )
    parser.add_argument(
        "--max-waiters",
        type=int,
        default=default("FUSELINE_MAX_WAITERS", "256"),
        help="FUSELINE_MAX_WAITERS: threads per process for long polls",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=default("FUSELINE_SHUTDOWN_GRACE_SECONDS", "5"),
        help="FUSELINE_SHUTDOWN_GRACE_SECONDS: time requests in flight get on shutdown",
    )
    parser.add_argument(
        "--default-lease",
        type=float,
        default=default("FUSELINE_DEFAULT_LEASE_SECONDS", "30"),
        help="FUSELINE_DEFAULT_LEASE_SECONDS: lease of a step without a StepTimeoutPolicy",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=default("FUSELINE_MAX_ATTEMPTS", "3"),
        help="FUSELINE_MAX_ATTEMPTS: hand-outs of a step without a RetryPolicy before an "
        "expired lease fails it",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=default("FUSELINE_RETENTION_DAYS", None),
        help="FUSELINE_RETENTION_DAYS: delete finished runs older than this (default: keep)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=default("FUSELINE_POLL_INTERVAL_SECONDS", "5"),
        help="FUSELINE_POLL_INTERVAL_SECONDS: how long a waiting long poll relies on wake-up "
        "signals before it looks at the database itself",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        default=env.get("FUSELINE_DOCS", "1") in ("0", "false", "no"),
        help="do not serve /openapi.json and /docs (FUSELINE_DOCS=0)",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build the configuration from flags and environment variables.

    Raises:
        ConfigError: A setting is invalid or unsafe; nothing was started.
        SystemExit: For ``--help`` and for flags argparse cannot parse.
    """
    env = os.environ if environ is None else environ
    args = _parser(env).parse_args(argv)
    shared = _tokens(
        env.get("FUSELINE_TOKEN"),
        _read_secret_file(env.get("FUSELINE_TOKEN_FILE"), "FUSELINE_TOKEN_FILE"),
    )
    worker_tokens = _tokens(
        *args.worker_token,
        env.get("FUSELINE_WORKER_TOKEN"),
        _read_secret_file(env.get("FUSELINE_WORKER_TOKEN_FILE"), "FUSELINE_WORKER_TOKEN_FILE"),
        *shared,
    )
    client_tokens = _tokens(
        *args.client_token,
        env.get("FUSELINE_CLIENT_TOKEN"),
        _read_secret_file(env.get("FUSELINE_CLIENT_TOKEN_FILE"), "FUSELINE_CLIENT_TOKEN_FILE"),
        *shared,
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        database_url=args.database_url or None,
        processes=args.processes,
        log_level=str(args.log_level).upper(),
        worker_tokens=worker_tokens,
        client_tokens=client_tokens,
        allow_unauthenticated_remote=args.allow_unauthenticated_remote,
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            max_result_bytes=args.max_result_bytes,
            max_schema_steps=args.max_schema_steps,
            max_wait_seconds=args.max_wait,
        ),
        threads=args.threads,
        max_waiters=args.max_waiters,
        shutdown_grace=args.shutdown_grace,
        docs=not args.no_docs,
        default_lease=args.default_lease,
        max_attempts=args.max_attempts,
        retention_days=args.retention_days,
        poll_interval=args.poll_interval,
    )
    check_config(config)
    return config


def check_config(config: ServerConfig) -> None:
    """Refuse settings that cannot work or would expose the broker.

    Raises:
        ConfigError: The first problem found.
    """
    if not 0 < config.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {config.port}.")
    if config.processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {config.processes}.")
    if config.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"--log-level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {config.log_level}."
        )
    limits = config.limits
    if limits.max_body_bytes < 1024:
        raise ConfigError("--max-body-bytes must be at least 1024.")
    if not 1 <= limits.max_result_bytes <= limits.max_body_bytes:
        raise ConfigError("--max-result-bytes must be between 1 and --max-body-bytes.")
    if limits.max_schema_steps < 1:
        raise ConfigError("--max-schema-steps must be at least 1.")
    if not 0 <= limits.max_wait_seconds <= 60:
        raise ConfigError("--max-wait must be between 0 and 60 seconds.")
    if config.threads < 1 or config.max_waiters < 1:
        raise ConfigError("--threads and --max-waiters must be at least 1.")
    if not 0 <= config.shutdown_grace <= 600:
        raise ConfigError("--shutdown-grace must be between 0 and 600 seconds.")
    if not 0 < config.default_lease <= 7 * 86400:
        raise ConfigError("--default-lease must be more than 0 and at most a week (604800).")
    if not 1 <= config.max_attempts <= 1000:
        raise ConfigError("--max-attempts must be between 1 and 1000.")
    if config.retention_days is not None and config.retention_days <= 0:
        raise ConfigError("--retention-days must be a positive number of days.")
    if not 0.05 <= config.poll_interval <= 60:
        raise ConfigError("--poll-interval must be between 0.05 and 60 seconds.")
    _check_tokens(config.worker_tokens, "worker")
    _check_tokens(config.client_tokens, "client")
    url = config.database_url or ""
    if url.startswith("memory:") and config.processes != 1:
        raise ConfigError(
            "The memory backend lives inside one process; use --processes 1, or PostgreSQL "
            "(or SQLite) to run several processes."
        )
    exposed = not config.auth_enabled and not config.loopback_only
    if exposed and not config.allow_unauthenticated_remote:
        raise ConfigError(
            f"Refusing to listen on {config.host} without tokens: anyone who can reach it "
            "could run and cancel workflows. Set FUSELINE_WORKER_TOKEN and "
            "FUSELINE_CLIENT_TOKEN (see docs/deployment.md), listen on 127.0.0.1, or pass "
            "--allow-unauthenticated-remote if something else guards the network."
        )
