"""The worker command: ``python -m fuseline.worker`` and ``fuseline worker``.

::

    export FUSELINE_WORKER_TOKEN=...
    python -m fuseline.worker my_app.flows:workflow --broker http://broker:8000 --concurrency 4

The broker's address and the worker token may also come from the
environment (``FUSELINE_BROKER_URL``, ``FUSELINE_WORKER_TOKEN``); a token on
the command line is visible to other users of the machine, so prefer the
environment. The exit status follows the ``fuseline`` command's: 0 after a
clean stop, 2 for a usage error, 5 when the broker refuses the token, 8 for
any other refusal, and 128 + the signal number after a second stop signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

# The worker command is part of the `fuseline` command: same exit codes, same parsing.
from fuseline.clients.cli import (
    ACCESS_DENIED,
    DEFAULT_BROKER_URL,
    OK,
    OTHER_ERROR,
    USAGE,
)
from fuseline.clients.cli import _seconds as _seconds
from fuseline.errors import (
    AuthenticationError,
    FuselineError,
    InvalidInputError,
    PermissionDeniedError,
)
from fuseline.worker._engine import ProcessEngine
from fuseline.worker._loading import load_workflows
from fuseline.worker._signals import ImmediateStop, StopSignals

__all__ = ["DEFAULT_BROKER_URL", "add_arguments", "main", "register", "run"]

URL_VARIABLE = "FUSELINE_BROKER_URL"
TOKEN_VARIABLE = "FUSELINE_WORKER_TOKEN"  # noqa: S105 - the variable's name, not a secret

log = logging.getLogger("fuseline.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the worker's options to ``parser``."""
    parser.add_argument(
        "workflows",
        nargs="+",
        metavar="MODULE:ATTRIBUTE",
        help="a Workflow (or a list of them) to run, e.g. my_app.flows:workflow",
    )
    parser.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help=f"the broker's address (default: ${URL_VARIABLE} or {DEFAULT_BROKER_URL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"the worker token (default: ${TOKEN_VARIABLE}; prefer the environment)",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=1, help="steps run at once (default: 1)"
    )
    parser.add_argument("--name", default=None, help="a name shown in the broker's worker list")
    parser.add_argument(
        "--sync-steps",
        choices=("thread", "process"),
        default="thread",
        help="run sync steps in threads, or in child processes that can be killed",
    )
    parser.add_argument(
        "--grace-period",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long a graceful stop waits for held steps (default: 30)",
    )
    parser.add_argument(
        "--poll-wait",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long one request waits at the broker for work (default: 5)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run the steps that are ready now, then exit instead of waiting for more",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="how much to log (default: INFO)",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``worker`` to a command's sub-commands (the ``fuseline`` command uses it).

    The sub-command's handler is stored as ``handler`` in the parsed
    namespace: call ``args.handler(args)`` and exit with what it returns.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker that takes steps from a broker",
        description="Run workflow steps handed out by a Fuseline broker.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


class _PendingStop:
    """Where the command's stop signals go: the engine, once there is one.

    The command handles SIGTERM and SIGINT from its first moment, so that a
    stop asked for while the workflows load ends the process cleanly instead
    of killing it by the signal.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: ProcessEngine | None = None
        self.requested = False

    def attach(self, engine: ProcessEngine) -> None:
        """Send stops to ``engine`` from now on, one asked for already too."""
        with self._lock:
            self._engine = engine
            requested = self.requested
        if requested:
            engine.stop()

    def __call__(self, immediately: bool) -> None:
        with self._lock:
            engine = self._engine
            self.requested = True
        if engine is not None:
            engine.stop(immediately=immediately)

    def describe(self) -> str:
        with self._lock:
            engine = self._engine
        return "still starting" if engine is None else engine.describe_held()


def run(args: argparse.Namespace) -> int:
    """Run a worker as ``args`` describe and return the exit status."""
    _configure_logging(args.log_level)
    pending = _PendingStop()
    try:
        with StopSignals(pending, pending.describe):
            return _run(args, pending)
    except ImmediateStop as stop:
        log.warning("stopped at once; steps still held will be handed out again")
        return 128 + stop.signum


def _run(args: argparse.Namespace, pending: _PendingStop) -> int:
    url = args.broker or os.environ.get(URL_VARIABLE) or DEFAULT_BROKER_URL
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    try:
        workflows = load_workflows(args.workflows)
    except InvalidInputError as exc:
        log.error("%s", exc)
        return USAGE
    from fuseline.clients import HttpBrokerClient

    with HttpBrokerClient(url, token) as client:
        engine = ProcessEngine(
            client,
            workflows,
            concurrency=args.concurrency,
            name=args.name,
            sync_steps=args.sync_steps,
            poll_wait=args.poll_wait,
            grace_period=args.grace_period,
        )
        pending.attach(engine)
        if pending.requested:
            log.info("asked to stop while starting up; stopping before taking any work")
            return OK
        log.info(
            "worker starting: broker %s, concurrency %d, %s",
            url,
            args.concurrency,
            "authenticating with a token" if token else "without a token",
        )
        try:
            if args.once:
                engine.work()
            else:
                engine.serve(handle_signals=False)  # this command handles them
        except (AuthenticationError, PermissionDeniedError) as exc:
            log.error(
                "the broker at %s rejected the worker's token (%s). Pass a worker token with "
                "--token or %s.",
                url,
                exc,
                TOKEN_VARIABLE,
            )
            return ACCESS_DENIED
        except FuselineError as exc:
            log.error("the worker cannot run: %s: %s", type(exc).__name__, exc)
            return OTHER_ERROR
        log.info("worker stopped")
        return OK


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the worker."""
    parser = argparse.ArgumentParser(
        prog="python -m fuseline.worker",
        description="Run workflow steps handed out by a Fuseline broker.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _configure_logging(level: str) -> None:
    # Only when the application has not configured logging itself.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
    logging.getLogger("fuseline").setLevel(level)
    if level != "DEBUG":
        # One line per HTTP request would drown the step lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
