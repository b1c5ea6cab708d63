#!/usr/bin/env python3
"""Bootstrap Fuseline's development tools and run them, with nothing but Python 3.11+.

Usage::

    python3 dev.py demo             # nox -s demo
    python3 dev.py test [ARGS...]   # nox -s tests [-- ARGS...]; ARGS go to pytest
    python3 dev.py check            # nox -s lint typecheck packaging docs
    python3 dev.py nox [ARGS...]    # any nox command line, e.g. `nox -s docs`

The first run creates ``.venv-dev/`` next to this file and installs pinned
versions of nox and uv into it; later runs reuse it (and reinstall when the
pins below change). The exit code is nox's. This file uses only the standard
library, on purpose: it is what runs before anything else is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

if sys.version_info < (3, 11):  # noqa: UP036 - this check is the point of the file
    sys.exit(f"Fuseline needs Python 3.11 or newer; this is {sys.version.split()[0]}.")

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-dev"
# Bump these deliberately; a change makes the next run reinstall them.
TOOLS = ("nox==2026.10.20", "uv==0.13.9")
STAMP = VENV / "fuseline-dev-tools.txt"
# The interpreter that the nox sessions ask for by default (see noxfile.py).
SESSION_PYTHON = "3.11"
PYTHON_OPTIONS = ("-p", "--python", "-P", "--force-python", "--extra-python", "--extra-pythons")

USAGE = __doc__.split("Usage::", 1)[1].split("The first run", 1)[0].rstrip()


def say(message: str) -> None:
    """Print a progress line, flushed so it interleaves with child output."""
    print(f"[dev.py] {message}", flush=True)


def venv_bin(name: str) -> Path:
    """Path of an executable inside ``.venv-dev``."""
    if os.name == "nt":
        return VENV / "Scripts" / f"{name}.exe"
    return VENV / "bin" / name


def run(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run a command from the repository root, showing it first."""
    shown = " ".join(
        str(Path(part).relative_to(ROOT)) if part.startswith(str(ROOT)) else part
        for part in command
    )
    say(f"$ {shown}")
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def ensure_tools() -> None:
    """Create ``.venv-dev`` with nox and uv unless it is already up to date."""
    python = venv_bin("python")
    wanted = "\n".join(TOOLS) + "\n"
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not python.exists():
        say(f"creating {VENV.relative_to(ROOT)}/ with {sys.executable}")
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
            pip = [str(python), "-m", "pip"]
        except (subprocess.CalledProcessError, OSError):
            # Some system Pythons ship without ensurepip (Debian's python3-venv
            # is a separate package): use this interpreter's pip instead.
            say("ensurepip is unavailable; creating the environment without pip")
            venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
            pip = [sys.executable, "-m", "pip", "--python", str(python)]
    else:
        pip = [str(python), "-m", "pip"]
    say(f"installing {', '.join(TOOLS)}")
    if run([*pip, "install", "--quiet", "--disable-pip-version-check", *TOOLS]) != 0:
        sys.exit("[dev.py] could not install the development tools (see the pip output above).")
    STAMP.write_text(wanted)


def python_options(nox_args: list[str]) -> list[str]:
    """Interpreter options to add when the sessions' default Python is not installed.

    The sessions ask for Python 3.11. When it cannot be found, run them on the
    interpreter that runs this script instead (it is 3.11 or newer), unless
    the command line already chooses an interpreter.
    """
    if any(arg.split("=", 1)[0] in PYTHON_OPTIONS for arg in nox_args):
        return []
    if shutil.which(f"python{SESSION_PYTHON}") is not None:
        return []
    say(f"python{SESSION_PYTHON} is not on PATH; nox sessions will use {sys.executable}")
    return ["--force-python", sys.executable]


def nox_command(args: list[str]) -> list[str]:
    """Translate this script's arguments into a nox command line."""
    command, rest = args[0], args[1:]
    if command == "test":
        return ["-s", "tests", *(["--", *rest] if rest else [])]
    if command == "demo":
        return ["-s", "demo", *(["--", *rest] if rest else [])]
    if command == "check":
        if rest:
            sys.exit("[dev.py] `check` takes no arguments; use `python3 dev.py nox ...`")
        return ["-s", "lint", "typecheck", "packaging", "docs"]
    if command == "nox":
        return rest
    sys.exit(f"[dev.py] unknown command {command!r}\n\nusage:{USAGE}")


def main(argv: list[str]) -> int:
    """Entry point: bootstrap the tools, then hand over to nox."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage:{USAGE}")
        return 0 if argv else 2
    nox_args = nox_command(argv)
    ensure_tools()
    # nox finds uv next to itself, but put .venv-dev first on PATH anyway so
    # that sessions and build tools see the pinned uv.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv_bin("python").parent), env.get("PATH", "")])
    nox = [str(venv_bin("python")), "-m", "nox", *python_options(nox_args), *nox_args]
    code = run(nox, env=env)
    say(f"nox exited with status {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
