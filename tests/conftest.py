"""Paths and fixtures shared by the tests.

The shared folder beside the repository contains the image corpus and
the fault cases. Only tests read it, never the service code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CASES = SHARED / "cases"
CORPUS = SHARED / "corpus"


@pytest.fixture
def cases() -> Path:
    """Folder of the fault case files. A test using it is skipped without it."""
    if not CASES.is_dir():
        pytest.skip(f"fault cases not found at {CASES}")
    return CASES
