"""Helpers for the browser tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@dataclass
class Studies:
    ct_study: str
    ct_series: str
    ct_sops: list[str]
    small_study: str
    small_series: str
    sr_series: str  # a second series of the small study: a structured report, no images
    lossy_study: str  # a lossy original (JPEG baseline, RGB), kept as received: no master
    lossy_series: str
    no_modality_study: str  # JPEG baseline without Modality and without a patient name
    names: list[str] = field(default_factory=list)  # patient family names, one per study that has one

    @property
    def all(self) -> list[str]:
        return [self.ct_study, self.small_study, self.lossy_study, self.no_modality_study]


@dataclass
class PageLog:
    """What a page did: responses and failures of requests to the DICOMweb root, and console errors."""

    root: str
    responses: list[tuple[str, int, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def bad_responses(self) -> list[tuple[str, int, str]]:
        return [r for r in self.responses if not 200 <= r[1] < 300]

    def summary(self) -> str:
        return (
            f"{len(self.responses)} DICOMweb responses; bad: {self.bad_responses()[:10]}; "
            f"failed: {self.failed[:10]}; console errors: {self.console[-10:]}"
        )


def uncompressed_frame_sha256(url: str) -> str:
    """SHA-256 of the server's uncompressed little-endian frame (single-part octet-stream)."""
    r = httpx.get(url, headers={"Accept": "application/octet-stream"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    return hashlib.sha256(r.content).hexdigest()


def screenshot_dir(temporary: Path) -> Path:
    """Where screenshots go: `temporary` unless DICOMWEB_SCREENSHOTS asks for docs/ (the README's pictures,
    tracked in git, so a plain test run leaves the tree clean) or names another folder."""
    wanted = os.environ.get("DICOMWEB_SCREENSHOTS", "")
    folder = DOCS if wanted == "docs" else Path(wanted) if wanted else temporary
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Any, folder: Path, name: str, **kwargs: Any) -> Path:
    path = folder / name
    page.screenshot(path=str(path), **kwargs)
    return path


def png_spread(png: bytes) -> float:
    """Standard deviation of a screenshot's gray levels: 0 for a uniform (blank) picture."""
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).std())
