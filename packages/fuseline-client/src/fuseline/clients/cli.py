"""The ``fuseline`` command: dispatch and inspect runs on a broker server.

::

    export FUSELINE_BROKER_URL=http://broker:8000 FUSELINE_TOKEN=...
    fuseline dispatch rag --input '{"query": "What is Fuseline?"}' --wait
    fuseline runs list --status FAILED
    fuseline runs show RUN_ID
    fuseline runs wait RUN_ID --timeout 60
    fuseline runs cancel RUN_ID
    fuseline workflows
    fuseline workers
    fuseline worker my_app.flows:workflow      # with fuseline-worker installed

Output is a table for people; ``--json`` prints one JSON document for
scripts. The exit status says what happened (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from fuseline.clients._base import BrokerClient
from fuseline.clients._cli_output import (
    print_json,
    show_run,
    show_runs,
    show_workers,
    show_workflows,
)
from fuseline.clients._http import HttpBrokerClient
from fuseline.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    ConflictError,
    FuselineError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    WaitTimeoutError,
    WorkflowDefinitionError,
)
from fuseline.messages import RunDetails
from fuseline.status import Status

__all__ = [
    "ACCESS_DENIED",
    "CONFLICT",
    "DEFAULT_BROKER_URL",
    "EXIT_CODES",
    "NOT_FOUND",
    "NOT_INSTALLED",
    "OK",
    "OTHER_ERROR",
    "RUN_NOT_SUCCEEDED",
    "TIMED_OUT",
    "UNAVAILABLE",
    "USAGE",
    "build_parser",
    "main",
    "parse_seconds",
]

DEFAULT_BROKER_URL = "http://127.0.0.1:8000"

OK = 0
RUN_NOT_SUCCEEDED = 1
USAGE = 2
NOT_FOUND = 3
CONFLICT = 4
ACCESS_DENIED = 5
UNAVAILABLE = 6
TIMED_OUT = 7
OTHER_ERROR = 8
NOT_INSTALLED = 9

EXIT_CODES: dict[int, str] = {
    OK: "done; with --wait or `runs wait`, the run SUCCEEDED",
    RUN_NOT_SUCCEEDED: "the run finished FAILED or CANCELLED",
    USAGE: "bad arguments or input the broker refused as invalid",
    NOT_FOUND: "no such run, workflow or worker",
    CONFLICT: "conflicts with the current state (e.g. cancelling a finished run)",
    ACCESS_DENIED: "no valid token, or a token whose role may not do this",
    UNAVAILABLE: "the broker (or its database) cannot be reached",
    TIMED_OUT: "the run was still going when the wait timed out",
    OTHER_ERROR: "any other error reported by the broker",
    NOT_INSTALLED: "the command needs a package that is not installed",
}
"""Exit status of ``fuseline`` and what it means."""

ClientFactory = Callable[[argparse.Namespace], BrokerClient]


def _exit_code(error: FuselineError) -> int:
    for cls, code in (
        (WaitTimeoutError, TIMED_OUT),
        (NotFoundError, NOT_FOUND),
        (ConflictError, CONFLICT),
        (AuthenticationError, ACCESS_DENIED),
        (PermissionDeniedError, ACCESS_DENIED),
        (BrokerUnavailableError, UNAVAILABLE),
        (InvalidInputError, USAGE),
        (WorkflowDefinitionError, USAGE),
    ):
        if isinstance(error, cls):
            return code
    return OTHER_ERROR


def _http_client(args: argparse.Namespace) -> BrokerClient:
    url = args.broker or os.environ.get("FUSELINE_BROKER_URL") or DEFAULT_BROKER_URL
    token = (
        args.token or os.environ.get("FUSELINE_TOKEN") or os.environ.get("FUSELINE_CLIENT_TOKEN")
    )
    return HttpBrokerClient(url, token or None, timeout=args.request_timeout)


# -- arguments -------------------------------------------------------------------------


def parse_seconds(text: str) -> float:
    """Parse a command-line duration: a number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, got {text}")
    return value


_seconds = parse_seconds  # the name fuseline.worker.cli imports


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker",
        metavar="URL",
        help=f"the broker's address (default: $FUSELINE_BROKER_URL or {DEFAULT_BROKER_URL})",
    )
    common.add_argument(
        "--token",
        help="a client token (default: $FUSELINE_TOKEN; prefer the environment, "
        "since command lines are visible to other users)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    common.add_argument(
        "--request-timeout",
        type=parse_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time allowed for one HTTP request (default: 10)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``fuseline`` argument parser (with ``worker`` when fuseline-worker is installed)."""
    epilog = "exit status:\n" + "\n".join(f"  {c}  {text}" for c, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="fuseline",
        description="Dispatch and inspect Fuseline runs on a broker server.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()

    dispatch = commands.add_parser(
        "dispatch", parents=[common], help="start a run of a stored workflow"
    )
    dispatch.add_argument("workflow_id", help="the workflow's id, as registered by its workers")
    dispatch.add_argument("--version", help="the workflow version (default: the latest)")
    dispatch.add_argument(
        "--input",
        default=None,
        metavar="JSON",
        help="the run's inputs: a JSON object, @file.json to read one, or - for stdin",
    )
    dispatch.add_argument(
        "--idempotency-key", help="repeating a dispatch with the same key returns the same run"
    )
    dispatch.add_argument("--wait", action="store_true", help="wait for the run to finish")
    dispatch.add_argument(
        "--timeout", type=parse_seconds, default=None, help="with --wait: give up after SECONDS"
    )
    dispatch.set_defaults(handler=_dispatch)

    runs = commands.add_parser("runs", help="list, show, wait for or cancel runs")
    run_commands = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = run_commands.add_parser("list", parents=[common], help="list runs, newest first")
    listing.add_argument("--workflow", help="only runs of this workflow id")
    listing.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    listing.add_argument("--limit", type=int, default=20, help="runs per page (default: 20)")
    listing.add_argument("--cursor", help="the page to show, from a previous listing")
    listing.set_defaults(handler=_runs_list)
    show = run_commands.add_parser("show", parents=[common], help="show a run and its steps")
    show.add_argument("run_id")
    show.set_defaults(handler=_runs_show)
    wait = run_commands.add_parser("wait", parents=[common], help="wait for a run to finish")
    wait.add_argument("run_id")
    wait.add_argument("--timeout", type=parse_seconds, default=None, help="give up after SECONDS")
    wait.set_defaults(handler=_runs_wait)
    cancel = run_commands.add_parser("cancel", parents=[common], help="cancel a run")
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=_runs_cancel)

    workflows = commands.add_parser(
        "workflows", parents=[common], help="list the stored workflow versions"
    )
    workflows.add_argument("--workflow", help="only versions of this workflow id")
    workflows.set_defaults(handler=_workflows)
    workers = commands.add_parser("workers", parents=[common], help="list registered workers")
    workers.set_defaults(handler=_workers)

    _add_worker_command(commands)
    return parser


def _add_worker_command(commands: Any) -> None:
    # fuseline-worker provides `fuseline worker`; this package only leaves the slot.
    try:
        worker_cli = importlib.import_module("fuseline.worker.cli")
    except ImportError as exc:
        if exc.name not in ("fuseline.worker", "fuseline.worker.cli"):
            raise  # installed, but broken: show the real error
        missing = commands.add_parser(
            "worker", help="run a worker (needs fuseline-worker)", add_help=False
        )
        missing.add_argument("rest", nargs=argparse.REMAINDER)
        missing.set_defaults(handler=_worker_missing)
        return
    worker_cli.register(commands)


# -- commands ----------------------------------------------------------------------------


class _Command:
    """What a command needs: its arguments, a client and the output streams."""

    def __init__(
        self, args: argparse.Namespace, client: BrokerClient, out: TextIO, err: TextIO
    ) -> None:
        self.args = args
        self.client = client
        self.out = out
        self.err = err


def _read_inputs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise InvalidInputError(f"Cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"--input is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("--input must be a JSON object of input names to values.")
    return value


def _finished(cmd: _Command, run: RunDetails) -> int:
    if cmd.args.json:
        print_json(run, cmd.out)
    else:
        show_run(run, cmd.out)
    return OK if run.status is Status.SUCCEEDED else RUN_NOT_SUCCEEDED


def _dispatch(cmd: _Command) -> int:
    args = cmd.args
    inputs = _read_inputs(args.input)
    if args.wait:
        # One request when the run ends within a long poll (the dispatch waits).
        run = cmd.client.run_workflow(
            args.workflow_id,
            inputs,
            version=args.version,
            timeout=args.timeout,
            idempotency_key=args.idempotency_key,
        )
        return _finished(cmd, run)
    run_id = cmd.client.dispatch(
        args.workflow_id, inputs, version=args.version, idempotency_key=args.idempotency_key
    )
    if args.json:
        print_json(cmd.client.get_run(run_id), cmd.out)
    else:
        cmd.out.write(run_id + "\n")
    return OK


def _runs_list(cmd: _Command) -> int:
    args = cmd.args
    page = cmd.client.list_runs(
        workflow_id=args.workflow,
        status=Status(args.status) if args.status else None,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print_json(page, cmd.out)
    else:
        show_runs(page, cmd.out)
    return OK


def _runs_show(cmd: _Command) -> int:
    run = cmd.client.get_run(cmd.args.run_id)
    if cmd.args.json:
        print_json(run, cmd.out)
    else:
        show_run(run, cmd.out)
    return OK


def _runs_wait(cmd: _Command) -> int:
    return _finished(cmd, cmd.client.wait_for_run(cmd.args.run_id, timeout=cmd.args.timeout))


def _runs_cancel(cmd: _Command) -> int:
    run = cmd.client.cancel_run(cmd.args.run_id)
    if cmd.args.json:
        print_json(run, cmd.out)
    else:
        show_run(run, cmd.out)
    return OK


def _workflows(cmd: _Command) -> int:
    schemas = cmd.client.list_workflows()
    if cmd.args.workflow:
        schemas = [s for s in schemas if s.workflow_id == cmd.args.workflow]
    if cmd.args.json:
        print_json(schemas, cmd.out)
    else:
        show_workflows(schemas, cmd.out)
    return OK


def _workers(cmd: _Command) -> int:
    workers = cmd.client.list_workers()
    if cmd.args.json:
        print_json(workers, cmd.out)
    else:
        show_workers(workers, cmd.out)
    return OK


def _worker_missing(args: argparse.Namespace) -> int:
    # Never called: main() answers for the missing worker command itself.
    return NOT_INSTALLED


def main(
    argv: Sequence[str] | None = None,
    *,
    client_factory: ClientFactory | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``fuseline`` command and return its exit status.

    Args:
        argv: The arguments (default: the process's).
        client_factory: Builds the client from the parsed arguments (default:
            an ``HttpBrokerClient`` for ``--broker`` and ``--token``).
        stdout: Where results go.
        stderr: Where errors go.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else USAGE
    handler = args.handler
    if handler is _worker_missing:
        err.write(
            "fuseline: the worker command comes with the fuseline-worker package: "
            'pip install "fuseline[worker]"\n'
        )
        return NOT_INSTALLED
    if not hasattr(args, "request_timeout"):
        # A command contributed by another package, e.g. `fuseline worker`.
        return int(handler(args))
    try:
        with (client_factory or _http_client)(args) as client:
            return int(handler(_Command(args, client, out, err)))
    except FuselineError as exc:
        err.write(f"fuseline: {exc.message} [{exc.code}]\n")
        return _exit_code(exc)
    except KeyboardInterrupt:
        err.write("fuseline: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
