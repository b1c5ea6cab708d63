"""Fixtures of the broker's tests.

HTTP server tests (``test_http_*.py``) start ``python -m fuseline.broker.http``
as a real subprocess on a free port and talk to it over real HTTP.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Helpers such as http_server_support.py sit beside the tests; pytest's
# importlib mode does not put this folder on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

from broker_contract_support import backend, broker, durable_backend
from http_server_support import http_server, server
from postgres_support import postgres_admin_url, postgres_url

__all__ = [
    "backend",
    "broker",
    "durable_backend",
    "http_server",
    "postgres_admin_url",
    "postgres_url",
    "server",
]
