"""Rules about the repository itself: one version, one owner per module, typed packages.

These tests read the source tree (pyproject files, src directories) and the
installed ``fuseline`` package, so they run both against editable installs
(``nox -s tests``) and against the built wheels (``nox -s packaging``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "packages"

CORE = "fuseline-core"
META = "fuseline"
# Code distributions and the sub-packages of `fuseline` each one owns; core
# owns the package itself.
OWNED_SUBPACKAGES = {
    CORE: (),
    "fuseline-client": ("clients",),
    "fuseline-broker": ("broker", "storage"),
    "fuseline-worker": ("worker",),
}
DISTRIBUTIONS = (*OWNED_SUBPACKAGES, META)


def load_project(distribution: str) -> dict[str, Any]:
    with (PACKAGES / distribution / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def requirements_of(project: dict[str, Any]) -> list[Requirement]:
    found = [Requirement(text) for text in project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        found.extend(Requirement(text) for text in extra)
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORE_VERSION = load_project(CORE)["version"]


def test_every_distribution_is_in_the_repository() -> None:
    found = {path.parent.name for path in PACKAGES.glob("*/pyproject.toml")}
    assert found == set(DISTRIBUTIONS)
    for distribution in DISTRIBUTIONS:
        assert load_project(distribution)["name"] == distribution


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_version_matches_core(distribution: str) -> None:
    assert load_project(distribution)["version"] == CORE_VERSION


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_fuseline_requirements_pin_core_version(distribution: str) -> None:
    for requirement in requirements_of(load_project(distribution)):
        if normalize(requirement.name) in DISTRIBUTIONS:
            assert str(requirement.specifier) == f"=={CORE_VERSION}", (
                f"{distribution}: {requirement} must pin exactly =={CORE_VERSION}; "
                "run `nox -s bump_version -- X.Y.Z` instead of editing versions by hand"
            )


def test_runtime_version_is_the_released_version() -> None:
    fuseline = importlib.import_module("fuseline")
    assert fuseline.__version__ == CORE_VERSION


def test_dependency_rules() -> None:
    def names(distribution: str) -> set[str]:
        return {normalize(r.name) for r in requirements_of(load_project(distribution))}

    # The client never pulls the broker's server or database stack; the
    # worker never pulls the broker.
    assert names("fuseline-client").isdisjoint(
        {"robyn", "psycopg", "psycopg-pool", "fuseline-broker"}
    )
    assert names("fuseline-worker").isdisjoint({"robyn", "psycopg", "fuseline-broker"})
    assert "fuseline-core" in names("fuseline-client") & names("fuseline-worker") & names(META)
    # The broker's HTTP server speaks the client's wire models.
    assert "fuseline-client" in names("fuseline-broker")
    extras = load_project(META)["optional-dependencies"]
    assert set(extras) == {"client", "worker", "broker", "postgres", "all"}


@pytest.mark.parametrize("distribution", [d for d in OWNED_SUBPACKAGES if d != CORE])
def test_only_core_ships_files_at_the_package_root(distribution: str) -> None:
    root = PACKAGES / distribution / "src" / "fuseline"
    stray = sorted(path.name for path in root.iterdir() if path.is_file())
    assert stray == [], f"{distribution} must not ship files directly in fuseline/: {stray}"
    assert not (root / "__init__.py").exists()


def test_each_subpackage_has_exactly_one_owner() -> None:
    owners: dict[str, list[str]] = {}
    for distribution in OWNED_SUBPACKAGES:
        root = PACKAGES / distribution / "src" / "fuseline"
        for path in root.iterdir():
            if path.is_dir() and path.name != "__pycache__":
                owners.setdefault(path.name, []).append(distribution)
    for subpackage, distributions in owners.items():
        assert len(distributions) == 1, f"fuseline.{subpackage} is in {distributions}"
        owner = distributions[0]
        if owner != CORE:
            assert subpackage in OWNED_SUBPACKAGES[owner], (
                f"{owner} has fuseline/{subpackage}/ but its wheel config does not ship it"
            )
    for distribution, subpackages in OWNED_SUBPACKAGES.items():
        for subpackage in subpackages:
            assert owners.get(subpackage) == [distribution]


@pytest.mark.parametrize("distribution", [d for d in OWNED_SUBPACKAGES if d != CORE])
def test_wheel_config_ships_exactly_the_owned_subpackages(distribution: str) -> None:
    with (PACKAGES / distribution / "pyproject.toml").open("rb") as file:
        wheel = tomllib.load(file)["tool"]["hatch"]["build"]["targets"]["wheel"]
    expected = sorted(f"src/fuseline/{sub}" for sub in OWNED_SUBPACKAGES[distribution])
    assert sorted(wheel["only-include"]) == expected
    assert wheel["sources"] == ["src"]


def test_meta_distribution_ships_no_code() -> None:
    directory = PACKAGES / META
    assert not (directory / "src").exists()
    assert not list(directory.rglob("*.py"))


def test_every_package_is_typed() -> None:
    missing = []
    for distribution, subpackages in OWNED_SUBPACKAGES.items():
        root = PACKAGES / distribution / "src" / "fuseline"
        for package in [root / sub for sub in subpackages] or [root]:
            if not (package / "py.typed").is_file():
                missing.append(str((package / "py.typed").relative_to(ROOT)))
    assert missing == []


def test_test_file_names_are_unique() -> None:
    test_files = [
        *PACKAGES.glob("*/tests/**/test_*.py"),
        *ROOT.glob("tests-integration/**/test_*.py"),
    ]
    names = [path.name for path in test_files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert duplicates == []


@pytest.mark.parametrize(
    ("module", "distribution"),
    [
        ("fuseline", CORE),
        ("fuseline.clients", "fuseline-client"),
        ("fuseline.broker", "fuseline-broker"),
        ("fuseline.storage", "fuseline-broker"),
        ("fuseline.worker", "fuseline-worker"),
    ],
)
def test_installed_namespace_resolves_each_module_to_its_owner(
    module: str, distribution: str
) -> None:
    imported = importlib.import_module(module)
    assert imported.__file__ is not None
    path = Path(imported.__file__).resolve()
    assert path.parts[-len(module.split(".")) - 1 :] == (*module.split("."), "__init__.py")
    # nox says which kind of install it made; the suite must test that one.
    install = os.environ.get("FUSELINE_TEST_INSTALL")
    if install == "wheels":
        assert "site-packages" in path.parts, f"{module} is not from an installed wheel: {path}"
        assert not path.is_relative_to(PACKAGES), f"{module} imported from the source tree: {path}"
    elif install == "editable":
        assert path.is_relative_to(PACKAGES / distribution / "src")
    elif path.is_relative_to(PACKAGES):
        # Never a stray copy in another distribution's tree.
        assert path.is_relative_to(PACKAGES / distribution / "src")


def test_bump_version_rewrites_every_version_and_pin(tmp_path: Path) -> None:
    bump_version = load_script("bump_version")
    for distribution in DISTRIBUTIONS:
        target = tmp_path / "packages" / distribution
        target.mkdir(parents=True)
        (target / "pyproject.toml").write_text(
            (PACKAGES / distribution / "pyproject.toml").read_text()
        )

    changed = bump_version.bump("9.8.7rc1", root=tmp_path)

    assert len(changed) == len(DISTRIBUTIONS)
    assert bump_version.check(tmp_path) == []
    for distribution in DISTRIBUTIONS:
        text = (tmp_path / "packages" / distribution / "pyproject.toml").read_text()
        project = tomllib.loads(text)["project"]
        assert project["version"] == "9.8.7rc1"
        pins = [r for r in requirements_of(project) if normalize(r.name) in DISTRIBUTIONS]
        assert all(str(r.specifier) == "==9.8.7rc1" for r in pins)
        assert str(CORE_VERSION) not in text


def test_bump_version_check_reports_drift(tmp_path: Path) -> None:
    bump_version = load_script("bump_version")
    for distribution in DISTRIBUTIONS:
        target = tmp_path / "packages" / distribution
        target.mkdir(parents=True)
        text = (PACKAGES / distribution / "pyproject.toml").read_text()
        if distribution == "fuseline-worker":
            text = text.replace(f'"fuseline-client=={CORE_VERSION}"', '"fuseline-client>=0.0.1"')
        (target / "pyproject.toml").write_text(text)

    problems = bump_version.check(tmp_path)

    assert len(problems) == 1
    assert "fuseline-client>=0.0.1" in problems[0]


def test_skipped_postgres_test_fails_the_run_when_postgres_is_required(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    postgres: needs PostgreSQL\n")
    (tmp_path / "test_guard.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.postgres
            def test_needs_postgres():
                pytest.skip("no PostgreSQL here")

            def test_plain():
                pass
            """
        )
    )

    def run_pytest(require: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FUSELINE_REQUIRE_POSTGRES": require}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    required = run_pytest("1")
    relaxed = run_pytest("")

    assert required.returncode == pytest.ExitCode.TESTS_FAILED, required.stdout
    assert "test_needs_postgres" in required.stdout
    assert relaxed.returncode == pytest.ExitCode.OK, relaxed.stdout
