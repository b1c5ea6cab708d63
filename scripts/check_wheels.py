"""Check the built Fuseline wheels and sdists before anyone installs them.

Run by ``nox -s packaging`` on a directory that holds one wheel and one sdist
per distribution. It proves two things that editable installs cannot show:

1. **One owner per file.** Several distributions install into the same
   ``fuseline/`` directory, so every path under ``fuseline/`` must come from
   exactly one wheel, only ``fuseline-core`` may ship files directly in
   ``fuseline/`` (``fuseline/__init__.py`` above all), each other wheel ships
   only its own sub-packages, every shipped package has a ``py.typed``, and
   the ``fuseline`` meta-distribution ships metadata only.
2. **Each distribution works alone.** For every distribution, a fresh virtual
   environment gets that wheel and nothing else from this repository except
   the Fuseline distributions it depends on (from the same directory; third-party
   dependencies come from the package index). The environment must import what
   the distribution owns, must not contain what it must not pull (the client
   never brings robyn or psycopg, the worker never brings the broker), and the
   Fuseline files installed must be byte-for-byte the ones in our wheels.

Usage::

    python scripts/check_wheels.py DIST_DIR [--work-dir DIR] [--uv PATH | --pip]

Environments are made with uv (``--uv``, or ``uv`` on PATH), or with ``venv``
and pip when uv is not found or ``--pip`` is given. With ``--work-dir`` the
environments are kept there (``nox -s packaging`` reuses the ``fuseline-all``
one to run the integration tests against the installed wheels); otherwise
they live in a temporary directory. This script uses only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Distribution:
    """What one distribution ships and what installing it must (not) bring."""

    name: str
    # Top-level directories under `fuseline/` that this wheel owns; core owns
    # `fuseline/` itself, shown as "".
    owns: tuple[str, ...]
    # Requirement to install, relative to the wheel: "" or "[extra,...]".
    extras: str = ""
    # The Fuseline distributions that must end up installed.
    brings: frozenset[str] = frozenset()
    # Modules that must import in the fresh environment.
    imports: tuple[str, ...] = ()
    # Top-level modules and Fuseline sub-packages that must NOT be importable.
    absent: tuple[str, ...] = ()
    # Name of the environment when it differs from the distribution name.
    label: str = ""

    @property
    def venv_name(self) -> str:
        """Directory name of this check's environment."""
        return self.label or self.name


CORE = "fuseline-core"
CLIENT = "fuseline-client"
BROKER = "fuseline-broker"
WORKER = "fuseline-worker"
META = "fuseline"

SERVER_STACK = ("robyn", "psycopg", "psycopg_pool")

DISTRIBUTIONS = {
    CORE: Distribution(
        CORE,
        owns=("",),
        brings=frozenset({CORE}),
        imports=("fuseline",),
        absent=(*SERVER_STACK, "httpx", "fuseline.clients", "fuseline.broker", "fuseline.worker"),
    ),
    CLIENT: Distribution(
        CLIENT,
        owns=("clients",),
        brings=frozenset({CORE, CLIENT}),
        imports=("fuseline", "fuseline.clients", "httpx"),
        absent=(*SERVER_STACK, "fuseline.broker", "fuseline.storage", "fuseline.worker"),
    ),
    BROKER: Distribution(
        BROKER,
        owns=("broker", "storage"),
        brings=frozenset({CORE, CLIENT, BROKER}),
        imports=(
            "fuseline",
            "fuseline.broker",
            "fuseline.broker.http",
            "fuseline.broker.clients",
            "fuseline.storage",
            "robyn",
        ),
        absent=("psycopg", "psycopg_pool", "fuseline.worker"),
    ),
    WORKER: Distribution(
        WORKER,
        owns=("worker",),
        brings=frozenset({CORE, CLIENT, WORKER}),
        imports=("fuseline", "fuseline.clients", "fuseline.worker"),
        absent=(*SERVER_STACK, "fuseline.broker", "fuseline.storage"),
    ),
    META: Distribution(
        META,
        owns=(),
        brings=frozenset({META, CORE}),
        imports=("fuseline",),
        absent=(*SERVER_STACK, "fuseline.clients", "fuseline.broker", "fuseline.worker"),
    ),
}

# The meta-distribution with every extra: everything installs and imports.
EVERYTHING = Distribution(
    META,
    owns=(),
    extras="[all]",
    brings=frozenset({META, CORE, CLIENT, BROKER, WORKER}),
    imports=(
        "fuseline",
        "fuseline.clients",
        "fuseline.broker",
        "fuseline.storage",
        "fuseline.worker",
        "httpx",
        "robyn",
        "psycopg",
        "psycopg_pool",
    ),
    label="fuseline-all",
)

# Runs inside each fresh environment; prints a JSON report on stdout.
PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json, re, sys, traceback
spec = json.loads(sys.argv[1])
report = {"import_errors": {}, "present": [], "dists": {}}
for name in spec["imports"]:
    try:
        importlib.import_module(name)
    except Exception:
        report["import_errors"][name] = traceback.format_exc(limit=3)
for name in spec["absent"]:
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        report["present"].append(name)
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name == "fuseline" or name.startswith("fuseline-"):
        report["dists"][name] = {
            "version": dist.version,
            "record": dist.read_text("RECORD") or "",
        }
print(json.dumps(report))
"""


def normalize(name: str) -> str:
    """Normalize a distribution name as PEP 503 does."""
    return "-".join(part for part in name.replace("_", "-").replace(".", "-").split("-") if part)


def read_record(text: str) -> dict[str, str]:
    """Map each path of a RECORD file to its hash (files without a hash are left out)."""
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if len(row) >= 2 and row[1]}


def find_artifacts(dist_dir: Path, problems: list[str]) -> dict[str, Path]:
    """Return each distribution's wheel; record missing or extra artifacts."""
    wheels: dict[str, list[Path]] = {}
    sdists: dict[str, list[Path]] = {}
    for path in sorted(dist_dir.iterdir()):
        if path.suffix == ".whl":
            wheels.setdefault(normalize(path.name.split("-")[0]), []).append(path)
        elif path.name.endswith(".tar.gz"):
            sdists.setdefault(normalize(path.name.rsplit("-", 1)[0]), []).append(path)
    for kind, found in (("wheel", wheels), ("sdist", sdists)):
        for name in DISTRIBUTIONS:
            if len(found.get(name, [])) != 1:
                problems.append(f"expected one {kind} of {name}, found {found.get(name, [])}")
        for name in set(found) - set(DISTRIBUTIONS):
            problems.append(f"unexpected {kind}: {found[name]}")
    for name, paths in sdists.items():
        if name in DISTRIBUTIONS and len(paths) == 1:
            check_sdist(name, paths[0], problems)
    return {name: paths[0] for name, paths in wheels.items() if len(paths) == 1}


def check_sdist(name: str, sdist: Path, problems: list[str]) -> None:
    """An sdist carries its pyproject and README, and never core's ``__init__``."""
    with tarfile.open(sdist) as archive:
        members = {PurePosixPath(*PurePosixPath(m).parts[1:]) for m in archive.getnames()}
    for required in ("pyproject.toml", "README.md", "PKG-INFO"):
        if PurePosixPath(required) not in members:
            problems.append(f"{sdist.name}: missing {required}")
    if name != CORE and PurePosixPath("src/fuseline/__init__.py") in members:
        problems.append(f"{sdist.name}: ships src/fuseline/__init__.py, which belongs to core")


def check_ownership(wheels: dict[str, Path], problems: list[str]) -> None:
    """Every file under ``fuseline/`` belongs to exactly one wheel, the right one."""
    owners: dict[str, list[str]] = {}
    owned_by_others = {top for d in DISTRIBUTIONS.values() if d.name != CORE for top in d.owns}
    for name, wheel in wheels.items():
        dist = DISTRIBUTIONS[name]
        with zipfile.ZipFile(wheel) as archive:
            files = [PurePosixPath(n) for n in archive.namelist() if not n.endswith("/")]
        payload = [f for f in files if not f.parts[0].endswith((".dist-info", ".data"))]
        for path in payload:
            if path.parts[0] != "fuseline":
                problems.append(f"{wheel.name}: {path} is outside the fuseline package")
                continue
            owners.setdefault(str(path), []).append(name)
            top = path.parts[1] if len(path.parts) > 2 else ""
            # Core owns `fuseline/` except the sub-packages of the others.
            allowed = top not in owned_by_others if name == CORE else top in dist.owns
            if not allowed:
                problems.append(f"{wheel.name}: ships {path}, which {name} does not own")
        for top in dist.owns:
            typed = PurePosixPath("fuseline", top, "py.typed")
            if typed not in payload:
                problems.append(f"{wheel.name}: missing {typed}")
        if name == META and payload:
            problems.append(f"{wheel.name}: the meta-distribution must ship metadata only")
    for path, names in sorted(owners.items()):
        if len(names) != 1:
            problems.append(f"{path} is shipped by {len(names)} wheels: {', '.join(names)}")
    if owners.get("fuseline/__init__.py") != [CORE]:
        problems.append(
            f"fuseline/__init__.py must be shipped by {CORE} alone, "
            f"found {owners.get('fuseline/__init__.py')}"
        )


class Installer:
    """Creates environments and installs wheels with uv, or venv and pip."""

    def __init__(self, uv: str | None, dist_dir: Path) -> None:
        self.uv = uv
        self.dist_dir = dist_dir

    @staticmethod
    def python_of(venv: Path) -> Path:
        """The interpreter of a virtual environment."""
        if os.name == "nt":
            return venv / "Scripts" / "python.exe"
        return venv / "bin" / "python"

    def create(self, venv: Path) -> Path:
        """Create a fresh environment and return its interpreter."""
        if venv.exists():
            shutil.rmtree(venv)
        if self.uv:
            run([self.uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
        else:
            run([sys.executable, "-m", "venv", str(venv)])
        return self.python_of(venv)

    def install(self, python: Path, requirement: str) -> None:
        """Install one requirement; Fuseline distributions resolve from the dist dir."""
        links = ["--find-links", str(self.dist_dir)]
        if self.uv:
            # uv caches a find-links wheel by name and version, and every build
            # of the working tree is "0.1.0": without a refresh, a dependency
            # could come from an older build in the cache.
            refresh = [arg for name in DISTRIBUTIONS for arg in ("--refresh-package", name)]
            python_arg = ["--python", str(python)]
            run([self.uv, "pip", "install", "--quiet", *python_arg, *refresh, *links, requirement])
        else:
            run([str(python), "-m", "pip", "install", "--quiet", *links, requirement])


def run(command: list[str], shown: str | None = None) -> str:
    """Run a command, echoing it (or ``shown``); raise with its output when it fails."""
    print("  $", shown or " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"command failed ({result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def check_install(
    dist: Distribution,
    wheels: dict[str, Path],
    installer: Installer,
    work_dir: Path,
    problems: list[str],
) -> None:
    """Install one distribution alone in a fresh environment and probe it."""
    label = f"{dist.venv_name} ({dist.name}{dist.extras})"
    print(f"checking {label}", flush=True)
    wheel = wheels[dist.name]
    try:
        python = installer.create(work_dir / dist.venv_name)
        installer.install(python, f"{dist.name}{dist.extras} @ {wheel.resolve().as_uri()}")
        spec = {"imports": list(dist.imports), "absent": list(dist.absent)}
        probe = [str(python), "-c", PROBE, json.dumps(spec)]
        report = json.loads(run(probe, shown=f"{python} -c <probe> '{json.dumps(spec)}'"))
    except RuntimeError as error:
        problems.append(f"{label}: {error}")
        return
    for module, trace in report["import_errors"].items():
        problems.append(f"{label}: cannot import {module}:\n{trace}")
    for module in report["present"]:
        problems.append(f"{label}: {module} is importable but must not be installed")
    installed = set(report["dists"])
    if installed != dist.brings:
        problems.append(
            f"{label}: installed Fuseline distributions {sorted(installed)}, "
            f"expected {sorted(dist.brings)}"
        )
    for name in installed & set(wheels):
        # Same files as our wheel, so nothing came from an index by mistake.
        with zipfile.ZipFile(wheels[name]) as archive:
            record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
            expected = read_record(archive.read(record_name).decode())
        actual = read_record(report["dists"][name]["record"])
        differing = sorted(path for path, digest in expected.items() if actual.get(path) != digest)
        if differing:
            problems.append(f"{label}: {name} files differ from the built wheel: {differing}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist_dir", type=Path, help="directory of built wheels and sdists")
    parser.add_argument("--work-dir", type=Path, help="keep the environments in this directory")
    parser.add_argument("--uv", default=shutil.which("uv"), help="uv executable (default: on PATH)")
    parser.add_argument("--pip", action="store_true", help="use venv and pip even if uv is found")
    args = parser.parse_args(argv)

    problems: list[str] = []
    wheels = find_artifacts(args.dist_dir, problems)
    check_ownership(wheels, problems)
    if problems:
        # Installing broken wheels would only bury the real problem.
        print("\n".join(["FAILED:", *problems]), file=sys.stderr)
        return 1
    print(f"ownership: {len(wheels)} wheels, every file under fuseline/ has one owner")

    installer = Installer(None if args.pip else args.uv, args.dist_dir.resolve())
    with tempfile.TemporaryDirectory(prefix="fuseline-wheels-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for dist in (*DISTRIBUTIONS.values(), EVERYTHING):
            check_install(dist, wheels, installer, work_dir, problems)

    if problems:
        print("\n".join(["FAILED:", *problems]), file=sys.stderr)
        return 1
    print("all wheels install alone and import what they own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
