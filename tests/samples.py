"""Test images by name, from pydicom's test files or pydicom-data (WG04 and others)."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file


def sample(name: str) -> Path:
    """The path of a pydicom or pydicom-data test file; fails (not skips) when it is missing."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: pip install pydicom-data"
    return Path(path)
