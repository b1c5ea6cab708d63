"""Which broker backs the server, chosen by ``DATABASE_URL``.

``describe`` is what gets logged: it names the backend and where it lives,
and never a password (nor anything else from the URL's query string).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fuseline.broker._base import Broker
from fuseline.broker.http._config import ConfigError, ServerConfig

__all__ = ["DEFAULT_SQLITE_FILE", "StorageTarget", "open_broker", "storage_target"]

DEFAULT_SQLITE_FILE = "fuseline-broker.sqlite3"

Kind = Literal["memory", "sqlite", "postgresql"]


@dataclass(frozen=True)
class StorageTarget:
    """A parsed ``DATABASE_URL``.

    Attributes:
        kind: The backend.
        location: The SQLite file, or the PostgreSQL connection string.
        description: Safe to log: no password.
    """

    kind: Kind
    location: str
    description: str


def storage_target(url: str | None, cwd: Path | None = None) -> StorageTarget:
    """Parse ``url`` (``None``: the SQLite file in the working directory).

    Raises:
        ConfigError: The URL names no backend this server knows.
    """
    here = cwd or Path.cwd()
    if not url:
        path = (here / DEFAULT_SQLITE_FILE).resolve()
        return StorageTarget("sqlite", str(path), f"SQLite file {path} (DATABASE_URL is not set)")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return StorageTarget("memory", "", "memory (this process only; lost on exit)")
    if scheme == "sqlite":
        # sqlite:///abs/path.db, sqlite:relative.db and sqlite://relative.db
        rest = url[len("sqlite:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        if not rest:
            raise ConfigError("DATABASE_URL=sqlite: needs a file, e.g. sqlite:///var/lib/f.db")
        path = (here / rest).resolve()
        return StorageTarget("sqlite", str(path), f"SQLite file {path}")
    if scheme in ("postgresql", "postgres"):
        return StorageTarget("postgresql", url, f"PostgreSQL at {_safe_postgres(url)}")
    raise ConfigError(
        f"DATABASE_URL must start with postgresql://, sqlite: or memory://, not {scheme}:..."
    )


def _safe_postgres(url: str) -> str:
    try:
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    return f"{user}{host}{port}{parts.path}"


def open_broker(target: StorageTarget, config: ServerConfig | None = None) -> Broker:
    """Create the broker for ``target`` (which creates its tables if needed)."""
    from fuseline import broker

    settings = config or ServerConfig()
    options: dict[str, Any] = {
        "default_lease": settings.default_lease,
        "default_max_attempts": settings.max_attempts,
        "retention": None if settings.retention_days is None else settings.retention_days * 86400,
    }
    if target.kind == "memory":
        return broker.MemoryBroker(**options)
    made: broker.StorageBroker
    if target.kind == "sqlite":
        made = broker.SQLiteBroker(path=target.location, **options)
    else:
        made = broker.PostgresBroker(target.location, **options)
    # Only other processes can change a database unheard; memory has none.
    made.storage.poll_interval = settings.poll_interval
    return made
