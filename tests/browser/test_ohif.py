"""OHIF v3 (the prebuilt @ohif/app) served at /ohif/ and /ohif-progressive/ against this server."""

from __future__ import annotations

import time
from typing import Any

from browser_support import PageLog, Studies, png_spread, screenshot

from tests.conftest import Server

# OHIF's onboarding tour would cover the viewport in screenshots: mark it as already shown.
NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
# Everything but the viewport canvas hidden, so a screenshot holds only the pixels OHIF drew.
CANVAS_ONLY = "* { visibility: hidden !important; } canvas.cornerstone-canvas { visibility: visible !important; }"


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


def open_ct_in_ohif(open_page: Any, server: Server, studies: Studies, mount: str, list_shot: str | None) -> tuple[Any, PageLog]:
    page, log = open_page(1280, 800)
    page.context.add_init_script(NO_TOUR)
    page.goto(f"{server.base}{mount}/")
    for name in studies.names:  # the study list shows every stored study
        page.get_by_text(name).first.wait_for(timeout=90_000)
    if list_shot:
        screenshot(page, list_shot)
    page.goto(f"{server.base}{mount}/viewer?StudyInstanceUIDs={studies.ct_study}")
    spread = wait_for_image(page)
    wait_until_quiet(page, log)
    assert spread > 10, f"the viewport stayed blank (gray-level spread {spread:.1f}); {log.summary()}"
    return page, log


def frame_responses(log: PageLog) -> list[tuple[str, int, str]]:
    return [r for r in log.responses if "/frames/" in r[0]]


def test_ohif_shows_study_list_and_draws_ct(open_page: Any, browser_server: Server, studies: Studies) -> None:
    page, log = open_ct_in_ohif(open_page, browser_server, studies, "/ohif", "ohif-study-list.png")
    screenshot(page, "ohif-ct.png")
    assert not log.bad_responses() and not log.failed, log.summary()
    frames = frame_responses(log)
    assert frames, log.summary()
    # The default configuration takes frames as stored: the layered lossless J2K masters.
    assert all("image/jp2" in ctype for _, _, ctype in frames), frames


def test_ohif_progressive_gets_htj2k(open_page: Any, browser_server: Server, studies: Studies) -> None:
    page, log = open_ct_in_ohif(open_page, browser_server, studies, "/ohif-progressive", None)
    screenshot(page, "ohif-progressive-ct.png")
    assert not log.bad_responses() and not log.failed, log.summary()
    frames = frame_responses(log)
    assert frames, log.summary()
    assert all("image/jphc" in ctype for _, _, ctype in frames), frames
