"""Set the version of every Fuseline distribution at once.

All five distributions share one version number, and the ones that depend on
each other pin that exact version (``fuseline-core==X.Y.Z``). This script
rewrites the ``version`` of each ``packages/*/pyproject.toml`` and every ``==``
pin on a Fuseline distribution, then re-reads the files to prove that they
agree. It is run by ``nox -s bump_version -- X.Y.Z``, the one place where a
version is set; it uses only the standard library.

Usage::

    python scripts/bump_version.py 0.2.0
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DISTRIBUTIONS = (
    "fuseline-core",
    "fuseline-client",
    "fuseline-broker",
    "fuseline-worker",
    "fuseline",
)

# A public PEP 440 version: release segment plus optional pre, post and dev parts.
_VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?")

# The `version = "..."` line of a pyproject's [project] table.
_VERSION_LINE = re.compile(r'^(version\s*=\s*")([^"]*)(")', re.MULTILINE)

# `fuseline-core==0.1.0`, `fuseline-broker[postgres]==0.1.0`, ... but not a
# longer name that merely ends in one of ours.
_PIN = re.compile(
    r"(?<![\w.-])(fuseline(?:-core|-client|-broker|-worker)?(?:\[[^\]]*\])?)\s*==\s*([^\"';,\s]+)"
)

# A requirement string: name, optional [extras], specifier up to any marker.
_REQUIREMENT = re.compile(r"\s*(?P<name>[A-Za-z0-9._-]+)\s*(\[[^\]]*\])?(?P<specifier>[^;]*)")


def pyproject_paths(root: Path = ROOT) -> list[Path]:
    """Return the pyproject.toml of every distribution, core first."""
    return [root / "packages" / name / "pyproject.toml" for name in DISTRIBUTIONS]


def _project_table_span(text: str, path: Path) -> tuple[int, int]:
    start = text.find("\n[project]\n")
    if start == -1 and text.startswith("[project]\n"):
        start = 0
    if start == -1:
        raise SystemExit(f"{path}: no [project] table")
    next_table = re.search(r"^\[", text[start + 2 :], re.MULTILINE)
    end = len(text) if next_table is None else start + 2 + next_table.start()
    return start, end


def rewrite(text: str, new_version: str, path: Path) -> str:
    """Return ``text`` with its project version and Fuseline pins set to ``new_version``."""
    start, end = _project_table_span(text, path)
    table, count = _VERSION_LINE.subn(rf"\g<1>{new_version}\g<3>", text[start:end], count=1)
    if count != 1:
        raise SystemExit(f'{path}: no `version = "..."` line in [project]')
    text = text[:start] + table + text[end:]
    return _PIN.sub(rf"\g<1>=={new_version}", text)


def check(root: Path = ROOT) -> list[str]:
    """Return every disagreement between the pyprojects' versions and pins."""
    problems: list[str] = []
    core_version = tomllib.loads(pyproject_paths(root)[0].read_text())["project"]["version"]
    for path in pyproject_paths(root):
        project = tomllib.loads(path.read_text())["project"]
        if project["version"] != core_version:
            problems.append(f"{path}: version {project['version']} != core's {core_version}")
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements.extend(extra)
        for requirement in requirements:
            match = _REQUIREMENT.match(requirement)
            if match is None:
                problems.append(f"{path}: cannot read requirement {requirement!r}")
                continue
            name = re.sub(r"[-_.]+", "-", match["name"]).lower()
            if name in DISTRIBUTIONS and match["specifier"].replace(" ", "") != f"=={core_version}":
                problems.append(f"{path}: {requirement!r} must pin exactly =={core_version}")
    return problems


def bump(new_version: str, root: Path = ROOT) -> list[Path]:
    """Set every distribution's version and inter-package pin to ``new_version``.

    Returns:
        The pyproject files that changed.
    """
    if not _VERSION.fullmatch(new_version):
        raise SystemExit(f"{new_version!r} is not a version like 1.2.3, 1.2.3rc1 or 1.2.3.dev0")
    new_texts = {}
    for path in pyproject_paths(root):
        old = path.read_text()
        new = rewrite(old, new_version, path)
        tomllib.loads(new)  # never write a file that no longer parses
        if new != old:
            new_texts[path] = new
    for path, text in new_texts.items():
        path.write_text(text)
    problems = check(root)
    if problems:
        raise SystemExit("versions still disagree after the rewrite:\n" + "\n".join(problems))
    return list(new_texts)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", help="the new version, e.g. 0.2.0")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    changed = bump(args.version, args.root)
    for path in changed:
        print(f"updated {path.relative_to(args.root)}")
    if not changed:
        print(f"every distribution is already at {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
