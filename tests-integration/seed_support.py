"""Run the code examples of the seed documents (../shared/seeds) as written.

The seeds are the documentation Fuseline must satisfy. They live beside the
repository, not in it; when they cannot be found the tests that use them skip
with the reason (CI always has them). Examples call ``search_vector_store`` and
``call_llm``, which stand in for a vector store and an LLM.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

_FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def seeds_dir() -> Path:
    """Where the seed documents are."""
    configured = os.environ.get("FUSELINE_SEEDS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seed_blocks(prefix: str) -> list[str]:
    """The python code blocks of the seed whose file name starts with ``prefix``."""
    folder = seeds_dir()
    matches = sorted(folder.glob(f"{prefix}_*.txt")) if folder.is_dir() else []
    if not matches:
        pytest.skip(f"seed documents not found in {folder} (set FUSELINE_SEEDS_DIR)")
    return _FENCE.findall(matches[0].read_text(encoding="utf-8"))


def search_vector_store(query: str) -> list[str]:
    """Stand-in for a vector store: two fixed documents about the query."""
    return [f"doc about {query}", f"notes on {query}"]


def call_llm(query: str, docs: list[str]) -> str:
    """Stand-in for an LLM: an answer that shows what it was given."""
    return f"answer to {query!r} from {len(docs)} docs"


def stand_ins() -> dict[str, Any]:
    """Names the seed examples use without defining them."""
    return {"search_vector_store": search_vector_store, "call_llm": call_llm}


def run_blocks(blocks: list[str], namespace: dict[str, Any], label: str) -> dict[str, Any]:
    """Execute ``blocks`` in order in one namespace and return it."""
    for index, block in enumerate(blocks):
        code = compile(block, f"<{label} block {index}>", "exec")
        exec(code, namespace)  # noqa: S102 - runs our own documentation examples
    return namespace


def install_module(name: str, **attributes: Any) -> types.ModuleType:
    """Make ``import name`` work for an example (``my_workflows`` and the like)."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module
