"""Shared setup of the cross-package suites."""

import sys
from pathlib import Path

# Helpers such as seed_support.py sit beside the tests; pytest's importlib
# mode does not put this folder on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))
