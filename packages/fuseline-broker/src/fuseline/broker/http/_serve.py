"""Running the server: a supervisor process and the server processes it starts.

The supervisor parses the settings, creates the storage's tables once, binds
the port, then forks ``--processes`` server processes that share the socket.
It never serves requests itself. On SIGTERM or SIGINT it closes a pipe that
every server process watches; each one stops answering long polls, waits up
to ``--shutdown-grace`` seconds for requests in flight, closes its broker and
exits. A second signal, or a process that does not stop in time, is killed.
A server process that dies on its own takes the whole server down (exit
status 1), so that the process manager restarts it in a known state.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, cast

from fuseline.broker.http._config import ConfigError, ServerConfig, parse_config
from fuseline.broker.http._context import FullBroker
from fuseline.broker.http._pipeline import Service
from fuseline.broker.http._robyn import bind, build_app, serve_on, silence_robyn
from fuseline.broker.http._storage import StorageTarget, open_broker, storage_target

__all__ = ["main", "serve"]

log = logging.getLogger("fuseline.broker.http")

# Time a process gets to exit after its grace period before it is killed.
_KILL_MARGIN = 2.0
_POLL = 0.25
_FLUSH_SECONDS = 0.25
# How long answers may take to be written past the grace (within _KILL_MARGIN).
_FLUSH_MAX = 1.0
_FLUSH_POLL = 0.01


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fuseline.broker.http``; returns the exit status.

    Exit statuses: 0 after a requested stop, 1 when the server could not start
    or a server process died, 2 for invalid settings.
    """
    try:
        config = parse_config(argv)
        target = storage_target(config.database_url)
    except ConfigError as exc:
        print(f"fuseline broker: {exc}", file=sys.stderr)
        return 2
    return serve(config, target)


def _setup_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger().setLevel(level)
    silence_robyn(level)


def serve(config: ServerConfig, target: StorageTarget | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status."""
    _setup_logging(config.log_level)
    target = target or storage_target(config.database_url)
    _warn_about_access(config)
    try:
        # Create the tables once, before several processes could race to.
        open_broker(target, config).close()
    except Exception as exc:
        log.error(
            "Cannot open the storage (%s): %s: %s", target.description, type(exc).__name__, exc
        )
        return 1
    try:
        socket = bind(config.host, config.port)
    except Exception as exc:
        log.error("Cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    log.info(
        "Fuseline broker listening on http://%s:%d (%d process%s); storage: %s",
        config.host,
        config.port,
        config.processes,
        "" if config.processes == 1 else "es",
        target.description,
    )
    if config.docs:
        log.info("API description at http://%s:%d/docs", config.host, config.port)
    return _supervise(config, target, socket)


def _warn_about_access(config: ServerConfig) -> None:
    if config.auth_enabled:
        if not config.worker_tokens:
            log.warning("No worker token is configured: no worker can register or take steps.")
        if not config.client_tokens:
            log.warning("No client token is configured: no application can dispatch runs.")
        return
    if config.loopback_only:
        log.warning(
            "No tokens are configured, so every request is accepted; listening on %s "
            "(this machine only). Set FUSELINE_WORKER_TOKEN and FUSELINE_CLIENT_TOKEN "
            "before exposing the broker.",
            config.host,
        )
    else:
        log.warning(
            "No tokens are configured and --allow-unauthenticated-remote is set: anyone "
            "who can reach %s:%d can run and cancel workflows.",
            config.host,
            config.port,
        )


def _supervise(config: ServerConfig, target: StorageTarget, socket: Any) -> int:
    stop_read, stop_write = os.pipe()
    context = multiprocessing.get_context("fork")
    children = []
    for index in range(config.processes):
        child = context.Process(
            target=_server_process,
            args=(config, target, socket.try_clone(), stop_read, stop_write),
            name=f"fuseline-broker-{index}",
        )
        child.start()
        children.append(child)
    os.close(stop_read)

    stop = threading.Event()
    force = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            force.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A signal also writes a byte here, so that the wait below, which sleeps
    # until a server process exits, wakes for it too: nothing is polled.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    try:
        status = _watch(children, stop, wake_read)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)

    log.info("Stopping: requests in flight get up to %.1f s.", config.shutdown_grace)
    os.close(stop_write)
    deadline = time.monotonic() + config.shutdown_grace + _KILL_MARGIN
    for child in children:
        while child.is_alive() and time.monotonic() < deadline and not force.is_set():
            child.join(_POLL)
    for child in children:
        if child.is_alive():
            log.warning("Server process %s did not stop in time; killing it.", child.name)
            child.kill()
            child.join()
    log.info("Stopped.")
    return status


def _watch(
    children: Sequence[multiprocessing.process.BaseProcess], stop: threading.Event, wake_read: int
) -> int:
    """Sleep until a signal asks to stop (0) or a server process exits on its own (1)."""
    sentinels = [child.sentinel for child in children]
    while not stop.is_set():
        dead = [c for c in children if not c.is_alive()]
        if dead:
            log.error(
                "Server process %s exited with status %s; stopping the broker.",
                dead[0].name,
                dead[0].exitcode,
            )
            return 1
        ready = multiprocessing.connection.wait([*sentinels, wake_read])
        if wake_read in ready:
            os.read(wake_read, 512)
    return 0


def _server_process(
    config: ServerConfig, target: StorageTarget, socket: Any, stop_read: int, stop_write: int
) -> None:
    # Only the supervisor holds the pipe's write end, so that its exit (or
    # its closing the pipe) is seen here as end-of-file.
    os.close(stop_write)
    # A Ctrl+C reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So may a SIGTERM (systemd sends it to every process of the service),
    # and Robyn's web server would act on it: it stops, and was seen to drop
    # requests in flight. Blocked here, before any thread starts, it stays
    # blocked in every thread of the process; the supervisor decides.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    broker = cast(FullBroker, open_broker(target, config))
    service = Service(config, broker, target.kind)
    app = build_app(config, service)
    watcher = threading.Thread(
        target=_stop_when_told,
        args=(stop_read, service, config.shutdown_grace),
        name="fuseline-stop",
        daemon=True,
    )
    watcher.start()
    serve_on(app, socket)


def _stop_when_told(stop_read: int, service: Service, grace: float) -> None:
    while True:
        try:
            if not os.read(stop_read, 64):
                break
        except InterruptedError:
            continue
    # From now on every request is answered with "Connection: close" (new
    # ones with 503), so the web server closes each connection once its
    # answer is written. The web server itself is not asked to stop: on
    # SIGTERM, Robyn's (actix) was seen to drop the connections of requests
    # still in flight, answer unsent, about one time in ten under load.
    service.state.stopping.set()
    answering = service.state.inflight
    connections = open_connections()
    deadline = time.monotonic() + grace
    if not service.state.wait_idle(grace):
        unanswered = service.state.inflight
        log.warning("%d request(s) still running after %.1f s; stopping anyway.", unanswered, grace)
        answering = max(0, answering - unanswered)
    _let_answers_out(answering, connections, max(deadline, time.monotonic() + _FLUSH_MAX))
    try:
        service.close()
    except Exception:
        log.exception("Closing the broker failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    # The web server runs in threads the Robyn runtime owns and offers no way
    # to stop from here; leaving the process directly is the clean way out
    # (the kernel closes the connections left, idle ones).
    os._exit(0)


def _let_answers_out(answering: int, connections: set[int] | None, until: float) -> None:
    """Wait until the answers of the requests that were in flight reached the socket.

    A handler that has returned may not have had its answer written yet, and
    the web server offers no signal for that; under load, writing it can take
    longer than any fixed pause. Each of those answers closes its connection
    once written, so this waits until ``answering`` of ``connections`` (the
    ones open when the stop began) are gone, or ``until``. Where the open
    connections cannot be read, and for answers to requests that arrived
    during the stop, a short pause has to do.
    """
    started = time.monotonic()
    while connections is not None and answering and time.monotonic() < until:
        still_open = open_connections()
        if still_open is None or len(connections - still_open) >= answering:
            break
        time.sleep(_FLUSH_POLL)
    time.sleep(max(0.0, _FLUSH_SECONDS - (time.monotonic() - started)))


_TCP_LISTEN = "0A"
_TCP_ESTABLISHED = "01"


def open_connections() -> set[int] | None:
    """The socket inodes of this process's open connections to its listening ports.

    Read from ``/proc`` (Linux); None elsewhere or when it cannot be read.
    Other connections of the process (to the database) are left out.
    """
    try:
        ours = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                ours.add(int(target[8:-1]))
        rows = []
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            try:
                lines = open(table, encoding="ascii")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # no IPv6 on this machine
            with lines:
                next(lines)  # the header
                for line in lines:
                    fields = line.split()
                    inode = int(fields[9])
                    if inode in ours:
                        rows.append((fields[1].rsplit(":", 1)[1], fields[3], inode))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    listening = {port for port, state, _ in rows if state == _TCP_LISTEN}
    return {inode for port, state, inode in rows if state == _TCP_ESTABLISHED and port in listening}
