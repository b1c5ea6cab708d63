"""Starting and stopping the broker and worker processes the benchmarks measure.

Each process gets a session of its own and a log file; stopping sends SIGTERM
to that process alone, then SIGKILL once its deadline has passed. Nothing is
ever stopped by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["ManagedProcess", "ProcessGroup", "free_port", "wait_until"]

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, pause: float = 0.05
) -> None:
    """Call ``condition`` until it is true; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(pause)


@dataclass
class ManagedProcess:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's log, to explain a failure."""
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ProcessGroup:
    """The child processes of one configuration, stopped together in reverse order.

    Args:
        log_dir: Where each process's output goes (``<name>.log``).
        environment: Variables every child gets on top of a cleaned copy of ours.
    """

    def __init__(self, log_dir: Path, environment: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.environment = environment
        self.processes: list[ManagedProcess] = []

    def start(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Start ``python ARGS`` with the benchmark folder importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSELINE_", "DATABASE_"))}
        env.update(self.environment)
        env.update(extra_env or {})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.log_dir,
            start_new_session=True,
        )
        process = ManagedProcess(name, popen, log_path, log)
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        """Raise if a process has exited, with the end of its log."""
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with status {process.popen.returncode}:\n"
                    f"{process.log_tail()}"
                )

    def stop(self, processes: list[ManagedProcess], timeout: float = 20.0) -> None:
        """Stop processes: one SIGTERM each at once, SIGKILL to those alive after ``timeout`` s.

        A second SIGTERM would tell a worker to stop at once, so each gets one.
        """
        for process in processes:
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.popen.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
            process.log.close()
            if process in self.processes:
                self.processes.remove(process)

    def stop_all(self) -> None:
        """Stop every process still running."""
        self.stop(list(self.processes))
