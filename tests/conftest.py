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

# Test modules that read the corpus or the fault cases while they are
# collected. Without the shared folder beside the repository they are not
# collected at all, and the run reports it in its header.
NEEDS_SHARED = [
    "test_archive_source.py", "test_benchmarks_smoke.py", "test_decoding.py",
    "test_descriptors.py", "test_e2e_archive.py", "test_e2e_http_input.py",
    "test_e2e_query.py", "test_e2e_scan.py", "test_handles.py",
    "test_http_client.py", "test_link_finder_urls.py", "test_matcher.py",
    "test_vector_index.py", "test_x_api_source.py",
]
collect_ignore = [] if SHARED.is_dir() else NEEDS_SHARED


def pytest_report_header(config) -> str | None:
    if SHARED.is_dir():
        return f"shared corpus and cases: {SHARED}"
    return (f"shared corpus and cases not found at {SHARED}: "
            f"{len(NEEDS_SHARED)} test modules that need them are not collected")


@pytest.fixture
def cases() -> Path:
    """Folder of the fault case files. A test using it is skipped without it."""
    if not CASES.is_dir():
        pytest.skip(f"fault cases not found at {CASES}")
    return CASES
