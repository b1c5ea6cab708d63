"""Every way Fuseline is built, checked and tested.

Run ``nox -l`` for the list of sessions, or use ``python3 dev.py`` which
installs nox and uv into ``.venv-dev/`` first. Sessions run on Python 3.11 by
default; use ``nox --force-python 3.13 -s tests`` for another interpreter.
Development dependencies live in the ``[dependency-groups]`` table of the root
``pyproject.toml``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_external_run = True
# A missing interpreter must fail the run, not skip the session with success.
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests", "packaging", "docs"]

ROOT = Path(__file__).resolve().parent
PYTHON = "3.11"
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")

# Installed together in editable mode by the sessions that run the code. The
# four share the `fuseline` import package. Each editable install is a .pth
# file that puts its package's src/ on sys.path (`dev-mode-dirs = ["src"]`).
# `import fuseline` finds core's src/fuseline/__init__.py, the only regular
# package among the four src/fuseline directories, and its first line
# (pkgutil.extend_path) appends the other three to `fuseline.__path__`. See
# "How the namespace split works" in docs/development.md.
EDITABLE_PACKAGES = (
    "-e",
    "packages/fuseline-core",
    "-e",
    "packages/fuseline-client",
    "-e",
    "packages/fuseline-broker[postgres]",
    "-e",
    "packages/fuseline-worker",
)
DISTRIBUTION_DIRS = (
    "packages/fuseline-core",
    "packages/fuseline-client",
    "packages/fuseline-broker",
    "packages/fuseline-worker",
    "packages/fuseline",
)
SOURCE_DIRS = (
    "packages/fuseline-core/src",
    "packages/fuseline-client/src",
    "packages/fuseline-broker/src",
    "packages/fuseline-worker/src",
)
# One package from each distribution's share of the namespace: if the split
# is broken, this fails right after the install with a clear traceback.
IMPORT_CHECK = (
    "import fuseline, fuseline.clients, fuseline.broker, fuseline.storage, fuseline.worker"
)


def install_groups(session: nox.Session, *groups: str) -> None:
    """Install development dependency groups from the root pyproject.toml."""
    session.install(*nox.project.dependency_groups(PYPROJECT, *groups))


def install_editable(session: nox.Session) -> None:
    """Install the four code distributions in editable mode and prove they import."""
    session.install(*EDITABLE_PACKAGES)
    session.run("python", "-c", IMPORT_CHECK)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against editable installs; arguments go to pytest."""
    install_editable(session)
    install_groups(session, "test")
    session.run("pytest", *session.posargs, env={"FUSELINE_TEST_INSTALL": "editable"})


@nox.session(python=PYTHON)
def packaging(session: nox.Session) -> None:
    """Build every wheel and sdist, check them, then test against the installed wheels.

    Arguments go to the pytest run of tests-integration/ in the environment
    where ``fuseline[all]`` was installed from the built wheels.
    """
    tmp = Path(session.create_tmp())
    dist_dir = tmp / "dist"
    envs_dir = tmp / "envs"
    for directory in (dist_dir, envs_dir):
        if directory.exists():
            shutil.rmtree(directory)

    uv = uv_executable(session)
    if uv is None:
        session.install("build")
    for package in DISTRIBUTION_DIRS:
        # Both tools build the sdist first and the wheel from the sdist, so a
        # file missing from an sdist breaks the build here.
        if uv is not None:
            session.run("uv", "build", "--quiet", package, "--out-dir", str(dist_dir))
        else:
            session.run("python", "-m", "build", package, "--outdir", str(dist_dir))

    check = ["python", "scripts/check_wheels.py", str(dist_dir), "--work-dir", str(envs_dir)]
    check += ["--uv", uv] if uv is not None else ["--pip"]
    session.run(*check)

    # The integration suites also run against the wheels, not just the source trees.
    everything = envs_dir / "fuseline-all"
    python = str(everything / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))
    test_deps = nox.project.dependency_groups(PYPROJECT, "test")
    if uv is not None:
        session.run("uv", "pip", "install", "--quiet", "--python", python, *test_deps)
    else:
        session.run(python, "-m", "pip", "install", "--quiet", *test_deps, external=True)
    session.run(
        python,
        "-m",
        "pytest",
        "tests-integration",
        *session.posargs,
        env={
            "FUSELINE_TEST_INSTALL": "wheels",
            # The environment check_wheels.py made with only fuseline-client.
            "FUSELINE_CLIENT_ONLY_PYTHON": str(
                envs_dir
                / "fuseline-client"
                / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
            ),
        },
        external=True,
    )


def uv_executable(session: nox.Session) -> str | None:
    """The uv that nox uses for this session, or None with the virtualenv backend."""
    if session.venv_backend != "uv":
        return None
    # nox found uv next to itself or on PATH; `nox.virtualenv.UV` is that path.
    uv = getattr(nox.virtualenv, "UV", "uv")
    return shutil.which(uv) or uv


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff (no changes are made)."""
    install_groups(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check every src directory with mypy in strict mode."""
    install_editable(session)
    install_groups(session, "typecheck")
    # The [tool.mypy] table lists the four src directories in both `files` and
    # `mypy_path`, with explicit package bases, so that `fuseline.clients` and
    # friends resolve across directories. Passing the directories here as
    # well keeps the command explicit.
    session.run("mypy", *SOURCE_DIRS, *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs in strict mode (warnings are errors)."""
    install_editable(session)
    install_groups(session, "docs")
    # Material for MkDocs prints a banner about its successor on every build.
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run examples/demo.py: embedded broker, worker processes, a branching workflow."""
    demo_script = ROOT / "examples" / "demo.py"
    if not demo_script.exists():
        session.error(
            f"{demo_script.relative_to(ROOT)} does not exist yet, so there is no demo to run"
        )
    install_editable(session)
    session.run("python", str(demo_script), *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmark suite; arguments go to benchmarks/run.py.

    ``nox -s bench -- --quick`` shrinks every workload for a smoke run. The
    suite needs a PostgreSQL server where it may create and drop databases
    (``FUSELINE_BENCH_DATABASE_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``)
    and ``pgbench``; ``-- --configs in-process,http-sqlite`` runs without them.
    It prints a table and a JSON document and writes the JSON to
    bench-results/ (git-ignored). See docs/performance.md.
    """
    install_editable(session)
    session.run("python", "benchmarks/run.py", *session.posargs)


def install_wheels(session: nox.Session) -> None:
    """Build the four code distributions' wheels and install them (not the source trees)."""
    dist_dir = Path(session.create_tmp()) / "wheels"
    if dist_dir.exists():
        shutil.rmtree(dist_dir)
    uv = uv_executable(session)
    if uv is None:
        session.install("build")
    code = [d for d in DISTRIBUTION_DIRS if d != "packages/fuseline"]  # not the meta one
    for package in code:
        if uv is not None:
            session.run("uv", "build", "--quiet", "--wheel", package, "--out-dir", str(dist_dir))
        else:
            session.run("python", "-m", "build", "--wheel", package, "--outdir", str(dist_dir))
    # The wheel files themselves, so that nothing named fuseline comes from an index.
    wheels = sorted(str(path) for path in dist_dir.glob("*.whl"))
    session.install(*wheels, "psycopg[binary]>=3.1", "psycopg-pool>=3.2")
    session.run("python", "-c", IMPORT_CHECK)


@nox.session(python=PYTHON)
@nox.parametrize("install", ["editable", "wheels"])
def chaos(session: nox.Session, install: str) -> None:
    """Run the fault-injection suite (the ``chaos`` cases of tests-integration/).

    Real brokers, workers and a private PostgreSQL cluster are killed,
    restarted and fed hostile input while runs are in flight; each case
    writes its figures to test-results/fault/ (git-ignored). It runs once
    against editable installs and once against the built wheels, and first
    checks that the modules really come from the install it made. Tests that
    need PostgreSQL read ``FUSELINE_TEST_DATABASE_URL``. Arguments go to
    pytest. See docs/reliability.md.
    """
    if install == "editable":
        install_editable(session)
    else:
        install_wheels(session)
    install_groups(session, "test")
    env = {"FUSELINE_CHAOS": "1", "FUSELINE_TEST_INSTALL": install}
    session.run(
        "pytest",
        "tests-integration/test_repository.py",
        "-k",
        "installed_namespace_resolves",
        env=env,
    )
    session.run("pytest", "tests-integration", "-m", "chaos", *session.posargs, env=env)


@nox.session(venv_backend="none")
def bump_version(session: nox.Session) -> None:
    """Set the version of every distribution: `nox -s bump_version -- X.Y.Z`.

    This is the one place where a version is set: it rewrites each
    packages/*/pyproject.toml and every `==` pin between Fuseline distributions.
    """
    if len(session.posargs) != 1:
        session.error("usage: nox -s bump_version -- X.Y.Z")
    session.run(sys.executable, "scripts/bump_version.py", session.posargs[0], external=True)
