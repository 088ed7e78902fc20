"""The viewer demo at /viewer-demo/: preview first, then the lossless frame, bit-exact, desktop and phone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from browser_support import Studies, screenshot, uncompressed_frame_sha256

from tests.conftest import Server


def demo_url(server: Server, studies: Studies, **params: str) -> str:
    query = {"study": studies.ct_study, "series": studies.ct_series, **params}
    return f"{server.base}/viewer-demo/?{urlencode(query)}"


def wait_state(page: Any, condition: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until `condition` (JavaScript over `s`, the page's window.viewerState) holds; return the state."""
    try:
        page.wait_for_function(
            f"() => {{ const s = window.viewerState; return !!s && ({condition}); }}", timeout=timeout * 1000
        )
    except Exception as exc:
        state = page.evaluate("window.viewerState")
        raise AssertionError(f"waiting for {condition}: {exc}\nstate: {json.dumps(state, indent=1)}") from exc
    return page.evaluate("window.viewerState")


FINAL = "s.view === 'viewer' && s.done && !!s.pixelsSha256"


def check_progressive(server: Server, state: dict[str, Any]) -> None:
    """A lossy preview was shown first, then the lossless frame, whose pixels are the server's."""
    stages = {s["name"]: s for s in state["stages"]}
    assert state["history"] == ["preview", "lossless"], json.dumps(state, indent=1)
    assert stages["preview"]["quality"] == "lossy"
    assert 0 < stages["preview"]["bytes"] < stages["lossless"]["bytes"] / 4, stages
    assert state["lossless"] and state["quality"] == "lossless"
    assert (state["width"], state["height"]) == (state["columns"], state["rows"])
    assert state["pixelsSha256"] == uncompressed_frame_sha256(server.base + state["frameUrl"])


def test_desktop_preview_then_lossless(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    page, log = open_page(1280, 800)
    page.goto(demo_url(browser_server, studies))
    state = wait_state(page, FINAL)
    # The master's fidelity ladder is shown once a master answered.
    wait_state(page, "document.querySelector('#quality-text').textContent.includes('quality layers')")
    assert state["decoder"] == "openjpeg-wasm", state["decoderProblem"]
    stages = {s["name"]: s for s in state["stages"]}
    assert stages["preview"]["transferSyntax"] == "1.2.840.10008.1.2.4.91", stages  # a cut of the master
    assert stages["lossless"]["transferSyntax"] == "1.2.840.10008.1.2.4.90", stages  # the whole master
    check_progressive(browser_server, state)
    wait_state(page, "document.querySelector('#badge').textContent.includes('LOSSLESS')")
    screenshot(page, shots, "viewer-demo-desktop.png")

    # Window/level by dragging on the image.
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y - 60, steps=6)
    page.mouse.up()
    after = page.evaluate("window.viewerState.window")
    assert after["width"] > state["window"]["width"] and after["center"] < state["window"]["center"], after

    # Scrolling goes to the next slice, which refines to its own lossless pixels.
    page.mouse.wheel(0, 120)
    state = wait_state(page, f"s.slice === 1 && {FINAL}")
    assert state["lossless"]
    assert state["pixelsSha256"] == uncompressed_frame_sha256(browser_server.base + state["frameUrl"])
    assert not log.console and not log.bad_responses() and not log.failed, log.summary()


def test_slow_link_shows_preview_first(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    page, _ = open_page(1280, 800)
    page.goto(demo_url(browser_server, studies, link="512k"))
    wait_state(page, "s.stage === 'preview'")
    screenshot(page, shots, "viewer-demo-preview.png")
    state = wait_state(page, FINAL)
    check_progressive(browser_server, state)
    lossless = next(s for s in state["stages"] if s["name"] == "lossless")
    # The page models the link: the lossless frame cannot arrive faster than 512 kbit/s allows.
    assert lossless["ms"] >= lossless["bytes"] * 8 / 512e3 * 1000 * 0.95, lossless
    assert state["firstImageMs"] < state["firstLosslessMs"], state


def test_phone_viewport(open_page: Any, browser_server: Server, studies: Studies, shots: Path) -> None:
    width, height = 390, 844
    page, _ = open_page(width, height, mobile=True)
    page.goto(f"{browser_server.base}/viewer-demo/")
    for name in studies.names:
        page.get_by_text(name).first.wait_for(timeout=30_000)
    page.locator(f'a.study[data-study="{studies.ct_study}"]').tap()
    state = wait_state(page, FINAL)
    check_progressive(browser_server, state)
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
    canvas = page.locator("#canvas").bounding_box()
    assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= width, canvas
    assert canvas["width"] >= width - 20 and canvas["height"] >= 300, canvas
    slider = page.locator("#slider").bounding_box()
    assert slider["y"] + slider["height"] <= height, f"the slider is below the screen: {slider}"
    assert page.locator("#badge").is_visible()
    wait_state(page, "document.querySelector('#badge').textContent.includes('LOSSLESS')")
    screenshot(page, shots, "viewer-demo-phone.png")
    page.locator("#next").tap()
    state = wait_state(page, f"s.slice === 1 && {FINAL}")
    assert state["lossless"]


@pytest.mark.parametrize("mode", ["j2k", "raw"])
def test_lossless_only_modes(open_page: Any, browser_server: Server, studies: Studies, mode: str) -> None:
    """The comparison modes load the lossless frame alone (J2K master, or uncompressed)."""
    page, _ = open_page(1280, 800)
    page.goto(demo_url(browser_server, studies, mode=mode))
    state = wait_state(page, FINAL)
    assert state["history"] == ["lossless"] and state["lossless"], state
    assert state["pixelsSha256"] == uncompressed_frame_sha256(browser_server.base + state["frameUrl"])


def test_without_page_decoder_uses_server_rendering(
    open_page: Any, browser_server: Server, studies: Studies
) -> None:
    """Where the page cannot decode JPEG 2000: the server's rendered preview, then uncompressed pixels."""
    page, _ = open_page(1280, 800)
    page.goto(demo_url(browser_server, studies, decoder="server"))
    state = wait_state(page, FINAL)
    assert state["decoder"] == "server"
    stages = {s["name"]: s for s in state["stages"]}
    assert stages["preview"]["variant"].startswith("server-rendered"), stages
    assert stages["lossless"]["variant"] == "uncompressed", stages
    assert state["history"] == ["preview", "lossless"], json.dumps(state, indent=1)
    assert state["lossless"]
    assert state["pixelsSha256"] == uncompressed_frame_sha256(browser_server.base + state["frameUrl"])


def test_lossy_original_says_so(open_page: Any, browser_server: Server, studies: Studies) -> None:
    """A JPEG baseline original has no master: a server-rendered preview, then the stored image decoded by the
    server, called what it is everywhere; no request is refused (no error in the console)."""
    page, log = open_page(1280, 800)
    page.goto(f"{browser_server.base}/viewer-demo/?study={studies.lossy_study}&series={studies.lossy_series}")
    state = wait_state(page, FINAL)
    assert state["history"] == ["preview", "original"], json.dumps(state, indent=1)
    assert state["quality"] == "original" and not state["lossless"]
    stages = {s["name"]: s for s in state["stages"]}
    assert stages["preview"]["variant"].startswith("server-rendered"), stages
    assert stages["original"]["variant"] == "uncompressed, no JPEG 2000 master to send", stages
    assert state["pixelsSha256"] == uncompressed_frame_sha256(browser_server.base + state["frameUrl"])
    assert page.locator("#badge").inner_text() == "FULL (lossy original)"
    rows = page.locator("#stages tbody").inner_text()
    assert (
        "original" in rows
        and "lossless" not in rows
        and "master" not in rows.replace("no JPEG 2000 master", "")
    ), rows
    assert "lossy-compressed" in page.locator("#quality-text").inner_text()
    assert not log.console and not log.bad_responses() and not log.failed, log.summary()


def test_series_without_images(open_page: Any, browser_server: Server, studies: Studies) -> None:
    """A structured report's series: said so, not "loading" forever."""
    page, log = open_page(1280, 800)
    page.goto(f"{browser_server.base}/viewer-demo/?study={studies.small_study}&series={studies.sr_series}")
    wait_state(page, "s.view === 'viewer' && s.sliceCount === 0 && s.done")
    assert page.locator("#badge").inner_text() == "no images"
    assert "no images" in page.locator("#series-text").inner_text()
    assert not log.console and not log.bad_responses() and not log.failed, log.summary()
