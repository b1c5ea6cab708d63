"""Every ```python block in README.md and docs/ runs.

Blocks of one page run in order in one namespace, like a reader following
the page. A block that cannot run in a test (it needs a server you start by
hand, say) is preceded by an HTML comment ``<!-- not-run: why -->``.
"""

import re
import sys
from pathlib import Path

import pytest
from seed_support import stand_ins

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- not-run:[^>]*-->\s*)?```python\n(.*?)```", re.DOTALL)
PAGES = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")] if p.exists())


def runnable_blocks(page: Path) -> list[str]:
    return [code for marker, code in BLOCK.findall(page.read_text()) if not marker]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = runnable_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python blocks")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}", **stand_ins()}
    # Classes defined by a page must be importable by name for pydantic.
    module = type(sys)(namespace["__name__"])
    monkeypatch.setitem(sys.modules, namespace["__name__"], module)
    namespace = module.__dict__ | namespace
    module.__dict__.update(namespace)
    for index, code in enumerate(blocks):
        exec(compile(code, f"<{page.name} block {index}>", "exec"), module.__dict__)  # noqa: S102


def test_not_run_markers_say_why() -> None:
    for page in PAGES:
        for match in re.finditer(r"<!-- not-run:([^>]*)-->", page.read_text()):
            assert match.group(1).strip(), f"{page.name}: a not-run marker needs a reason"
