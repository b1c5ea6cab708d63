"""The broker's HTTP server (Robyn): ``python -m fuseline.broker.http``.

Serves the JSON API described at ``/openapi.json`` (and shown at ``/docs``)
over the broker chosen by ``DATABASE_URL``. See docs/http-api.md for the
routes and docs/deployment.md for running it.

Importing this module does not import Robyn; :func:`main` and :func:`serve`
do.
"""

from fuseline.broker.http._config import ConfigError, Limits, ServerConfig, parse_config
from fuseline.broker.http._openapi import build_openapi
from fuseline.broker.http._serve import main, serve

__all__ = [
    "ConfigError",
    "Limits",
    "ServerConfig",
    "build_openapi",
    "main",
    "parse_config",
    "serve",
]
