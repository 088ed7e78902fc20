"""OHIF v3 (the prebuilt @ohif/app) served at /ohif/ and /ohif-progressive/ against this server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from browser_support import PageLog, Studies, png_spread, screenshot

from tests.conftest import Server

# OHIF's onboarding tour would cover the viewport in screenshots: mark it as already shown.
NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
# Everything but the viewport canvas hidden, so a screenshot holds only the pixels OHIF drew.
CANVAS_ONLY = (
    "* { visibility: hidden !important; } canvas.cornerstone-canvas { visibility: visible !important; }"
)


def canvas_spread(page: Any) -> float:
    canvas = page.locator("canvas.cornerstone-canvas").first
    style = page.add_style_tag(content=CANVAS_ONLY)
    try:
        return png_spread(canvas.screenshot(timeout=10_000))
    finally:
        style.evaluate("node => node.remove()")


def wait_for_image(page: Any, timeout: float = 90) -> float:
    page.locator("canvas.cornerstone-canvas").first.wait_for(timeout=timeout * 1000)
    deadline = time.time() + timeout
    spread = 0.0
    while time.time() < deadline:
        spread = canvas_spread(page)
        if spread > 10:
            return spread
        time.sleep(0.5)
    return spread


def wait_until_quiet(page: Any, log: PageLog, quiet: float = 1.5, timeout: float = 60) -> None:
    """Wait until no DICOMweb request has been answered for `quiet` seconds (prefetching is over)."""
    deadline = time.time() + timeout
    seen, since = -1, time.time()
    while time.time() < deadline:
        n = len(log.responses) + len(log.failed)
        if n != seen:
            seen, since = n, time.time()
        elif time.time() - since >= quiet:
            return
        page.wait_for_timeout(250)


# Study rows of OHIF 3.13's study list (its first row holds the filter inputs).
STUDY_ROWS = "tbody tr:not([data-filter-row])"
CONNECTION_ERROR = "Data Source Connection Error"


def wait_for_study_list(page: Any, studies: Studies) -> None:
    """Until the list shows every stored study; fails on OHIF's connection error page."""
    n = len(studies.all)
    deadline = time.time() + 90
    while page.locator(STUDY_ROWS).count() != n:
        if page.get_by_text(CONNECTION_ERROR).count():
            raise AssertionError(
                f"OHIF's study list says {CONNECTION_ERROR!r}: {page.inner_text('body')[:500]}"
            )
        if time.time() > deadline:
            raise AssertionError(
                f"the study list shows {page.locator(STUDY_ROWS).count()} of {n} studies: "
                f"{page.inner_text('body')[:800]}"
            )
        page.wait_for_timeout(250)
    assert page.locator('button[aria-label="Rows per page"]').inner_text().endswith(f"of {n}")
    for name in studies.names:
        assert page.get_by_text(name).count(), f"{name} is not in the study list"
    assert not page.get_by_text(CONNECTION_ERROR).count()


def open_in_ohif(open_page: Any, server: Server, study: str, mount: str) -> tuple[Any, PageLog]:
    page, log = open_page(1280, 800)
    page.context.add_init_script(NO_TOUR)
    page.goto(f"{server.base}{mount}/viewer?StudyInstanceUIDs={study}")
    spread = wait_for_image(page)
    wait_until_quiet(page, log)
    assert spread > 10, f"the viewport stayed blank (gray-level spread {spread:.1f}); {log.summary()}"
    return page, log


def frame_responses(log: PageLog) -> list[tuple[str, int, str]]:
    return [r for r in log.responses if "/frames/" in r[0]]


@pytest.mark.parametrize("mount", ["/ohif", "/ohif-progressive"])
def test_ohif_study_list_shows_every_study(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path, mount: str
) -> None:
    """Including one without Modality (its ModalitiesInStudy has no value), which must not break the list."""
    page, log = open_page(1280, 800)
    page.context.add_init_script(NO_TOUR)
    page.goto(f"{browser_server.base}{mount}/")
    wait_for_study_list(page, studies)
    if mount == "/ohif":
        screenshot(page, shots, "ohif-study-list.png")
    assert not log.bad_responses() and not log.failed, log.summary()


@pytest.mark.parametrize("mount", ["/ohif", "/ohif-single"])
def test_ohif_draws_ct(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path, mount: str
) -> None:
    page, log = open_in_ohif(open_page, browser_server, studies.ct_study, mount)
    if mount == "/ohif-single":
        screenshot(page, shots, "ohif-ct.png")
    assert not log.bad_responses() and not log.failed, log.summary()
    frames = frame_responses(log)
    assert frames, log.summary()
    # OHIF's own Accept takes frames as stored: the layered lossless J2K masters, and on /ohif/ cuts of them
    # first (test_ohif_stages.py); /ohif-single/ asks for each frame once, as it is.
    assert all("image/jp2" in ctype for _, _, ctype in frames), frames
    cuts = [url for url, _, _ in frames if "layers=" in url]
    assert bool(cuts) == (mount == "/ohif"), frames


def test_ohif_progressive_gets_htj2k(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    page, log = open_in_ohif(open_page, browser_server, studies.ct_study, "/ohif-progressive")
    screenshot(page, shots, "ohif-progressive-ct.png")
    assert not log.bad_responses() and not log.failed, log.summary()
    frames = frame_responses(log)
    assert frames, log.summary()
    assert all("image/jphc" in ctype for _, _, ctype in frames), frames


@pytest.mark.parametrize("mount", ["/ohif", "/ohif-single", "/ohif-progressive"])
def test_ohif_draws_lossy_original(
    open_page: Any, browser_server: Server, studies: Studies, mount: str
) -> None:
    """A JPEG baseline original has no master, so no HTJ2K and no cut: the progressive site's Accept list
    falls back to the frame as stored, and /ohif/'s `layers=preview` stage gets the frame as stored too (200).
    """
    _, log = open_in_ohif(open_page, browser_server, studies.lossy_study, mount)
    assert not log.bad_responses() and not log.failed, log.summary()
    frames = frame_responses(log)
    assert frames, log.summary()
    assert all("image/jpeg" in ctype and "1.2.840.10008.1.2.4.50" in ctype for _, _, ctype in frames), frames
