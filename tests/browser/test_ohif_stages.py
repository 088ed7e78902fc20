"""OHIF at /ohif/ loads each slice in two retrieve stages: a quality-layer cut of the master
(`layers=preview`, marked LOSSY), then the lossless master. The test holds every lossless request back
(Playwright route interception, no sleeps) to see the lossy stage on screen, then lets them through and
compares what OHIF shows with the server's uncompressed frames."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
from browser_support import Studies, screenshot
from test_ohif import NO_TOUR, canvas_spread, wait_until_quiet

from tests.conftest import Server

LOSSY, FULL = 7, 8  # Cornerstone3D's ImageQualityStatus

# What the stack viewport shows: its current slice, the image's quality status and stored-value pixels.
VIEWPORT_STATE = """() => {
  const cs = window.cornerstone;
  if (!cs) return null;
  for (const engine of cs.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      const image = vp.csImage;
      if (!image || !vp.getCurrentImageId) continue;
      return {index: vp.getCurrentImageIdIndex(), count: vp.getImageIds().length, imageId: image.imageId,
              quality: image.imageQualityStatus ?? null, rows: image.rows, columns: image.columns,
              scaled: !!(image.preScale && image.preScale.scaled),
              slope: image.preScale?.scalingParameters?.rescaleSlope ?? image.slope,
              intercept: image.preScale?.scalingParameters?.rescaleIntercept ?? image.intercept};
    }
  }
  return null;
}"""
VIEWPORT_PIXELS = """() => {
  for (const engine of window.cornerstone.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      if (vp.csImage && vp.getCurrentImageId) return Array.from(vp.csImage.getPixelData());
    }
  }
  return null;
}"""
SET_SLICE = """(index) => {
  for (const engine of window.cornerstone.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      if (vp.csImage && vp.getCurrentImageId) { vp.setImageIdIndex(index); return true; }
    }
  }
  return false;
}"""


def frame_kind(url: str) -> str | None:
    """ "lossy" for the first stage's request, "lossless" for the final one, None for anything else."""
    if "/frames/" not in url:
        return None
    layers = parse_qs(urlparse(url).query).get("layers")
    return "lossy" if layers == ["preview"] else "lossless" if layers is None else "other"


def sop_of(url: str) -> str:
    return urlparse(url).path.split("/instances/")[1].split("/")[0]


def wait_for(page: Any, what: str, check: Any, timeout: float = 60) -> Any:
    """Poll `check()` (letting the page's events run) until it gives something truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := check():
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}")


def expected_pixels(server: Server, studies: Studies, sop: str, state: dict[str, Any]) -> np.ndarray:
    url = f"{server.root}/studies/{studies.ct_study}/series/{studies.ct_series}/instances/{sop}/frames/1"
    r = httpx.get(url, headers={"Accept": "application/octet-stream"}, timeout=60)
    assert r.status_code == 200, r.text
    stored = np.frombuffer(r.content, dtype="<i2").astype(np.float64)  # WG04 CT: signed 16-bit container
    if state["scaled"]:  # Cornerstone applied the Modality LUT while decoding
        stored = stored * float(state["slope"]) + float(state["intercept"])
    return stored


def test_ohif_lossy_stage_first_then_lossless(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    page, log = open_page(1280, 800)
    page.context.add_init_script(NO_TOUR)
    order: list[tuple[str, str]] = []  # (kind, sop) of every frame request, in the order they were made
    answered: list[tuple[str, str]] = []  # (kind, sop) of every frame response
    held: dict[str, list[Any]] = {}  # lossless requests held back, per SOP Instance
    released: set[str] = set()

    def on_request(request: Any) -> None:
        if (kind := frame_kind(request.url)) is not None:
            order.append((kind, sop_of(request.url)))

    def on_response(response: Any) -> None:
        if (kind := frame_kind(response.url)) is not None:
            answered.append((kind, sop_of(response.url)))

    def hold_lossless(route: Any) -> None:
        sop = sop_of(route.request.url)
        if frame_kind(route.request.url) == "lossless" and sop not in released:
            held.setdefault(sop, []).append(route)
        else:
            route.continue_()

    def release(sop: str) -> None:
        released.add(sop)
        for route in held.pop(sop, []):
            route.continue_()

    def shown(index: int, quality: int) -> Any:
        return lambda: (
            (s := page.evaluate(VIEWPORT_STATE)) and s["index"] == index and s["quality"] == quality and s
        )

    def check_lossless(index: int) -> None:
        state = wait_for(page, f"slice {index} lossless", shown(index, FULL))
        sop = sop_of(state["imageId"])
        pixels = np.asarray(page.evaluate(VIEWPORT_PIXELS), dtype=np.float64)
        assert np.array_equal(pixels, expected_pixels(browser_server, studies, sop, state)), f"slice {index}"

    page.on("request", on_request)
    page.on("response", on_response)
    page.route("**/frames/**", hold_lossless)
    page.goto(f"{browser_server.base}/ohif/viewer?StudyInstanceUIDs={studies.ct_study}")

    # The first slice: the lossy cut on screen while its lossless request is held back.
    state = wait_for(page, "the lossy stage on screen", shown(0, LOSSY))
    assert (state["rows"], state["columns"]) == (512, 512)  # a layer cut keeps the full size
    first = sop_of(state["imageId"])
    wait_for(page, "the lossless request of the first slice", lambda: first in held)
    wait_for(page, "the lossy image drawn", lambda: canvas_spread(page) > 10)
    state = page.evaluate(VIEWPORT_STATE)
    assert state["quality"] == LOSSY
    lossy = np.asarray(page.evaluate(VIEWPORT_PIXELS), dtype=np.float64)
    exact = expected_pixels(browser_server, studies, first, state)
    assert lossy.shape == exact.shape and not np.array_equal(lossy, exact)  # really the cut, not the master
    screenshot(page, shots, "ohif-stage-lossy.png")
    release(first)
    check_lossless(0)
    screenshot(page, shots, "ohif-stage-lossless.png")

    # OHIF's stack prefetch then loads the other slices with the first retrieve stage: cuts only.
    wait_for(
        page,
        "every slice prefetched as a cut",
        lambda: {sop for kind, sop in answered if kind == "lossy"} >= set(studies.ct_sops),
    )
    assert {sop for kind, sop in order if kind == "lossless"} == {first}, order
    # Every other slice, once shown: lossy (its lossless request held back), then the master's pixels.
    for index in range(1, len(studies.ct_sops)):
        page.evaluate(SET_SLICE, index)
        state = wait_for(page, f"slice {index} lossy", shown(index, LOSSY))
        sop = sop_of(state["imageId"])
        wait_for(page, f"the lossless request of slice {index}", lambda s=sop: s in held)
        assert page.evaluate(VIEWPORT_STATE)["quality"] == LOSSY
        release(sop)
        check_lossless(index)
    wait_until_quiet(page, log)

    assert not held
    for sop in studies.ct_sops:
        kinds = [kind for kind, s in order if s == sop]
        assert "lossy" in kinds and "lossless" in kinds, (sop, kinds)
        assert kinds.index("lossy") < kinds.index("lossless"), (sop, kinds)
    assert "other" not in {kind for kind, _ in order}, order
    assert not log.bad_responses() and not log.failed, log.summary()
    cuts = [ctype for url, _, ctype in log.responses if frame_kind(url) == "lossy"]
    masters = [ctype for url, _, ctype in log.responses if frame_kind(url) == "lossless"]
    assert cuts and all("transfer-syntax=1.2.840.10008.1.2.4.91" in c for c in cuts), cuts
    assert masters and all("transfer-syntax=1.2.840.10008.1.2.4.90" in c for c in masters), masters
    # Thumbnails are the server's rendered ones, never a frame.
    assert any(url.split("?")[0].endswith("/thumbnail") for url, _, _ in log.responses), log.responses


# The MPR volume's per-slice quality and its image ids (Cornerstone3D's streaming image volume).
VOLUME_STATE = """() => {
  const cs = window.cornerstone;
  if (!cs) return null;
  for (const engine of cs.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      if (!vp.getAllVolumeIds) continue;
      for (const id of vp.getAllVolumeIds()) {
        const volume = cs.cache.getVolume(id);
        if (volume && volume.imageIds && volume.cachedFrames)
          return {volumeId: id, imageIds: volume.imageIds, cachedFrames: Array.from(volume.cachedFrames)};
      }
    }
  }
  return null;
}"""
VOLUME_SLICE = """([volumeId, k]) => {
  const volume = window.cornerstone.cache.getVolume(volumeId);
  const data = volume.voxelManager.getCompleteScalarDataArray();
  const [columns, rows] = volume.dimensions;
  return Array.from(data.slice(k * rows * columns, (k + 1) * rows * columns));
}"""


def test_ohif_mpr_volume_stages(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    """The volume viewports (MPR) load through the interleaved stages with this server's retrieve options:
    cuts first for some slices (LOSSY while the lossless requests are held), then every slice lossless."""
    page, log = open_page(1280, 800)
    page.context.add_init_script(NO_TOUR)
    order: list[tuple[str, str]] = []
    held: list[Any] = []
    release = {"now": False}

    def on_request(request: Any) -> None:
        if (kind := frame_kind(request.url)) is not None:
            order.append((kind, sop_of(request.url)))

    def hold_lossless(route: Any) -> None:
        if frame_kind(route.request.url) == "lossless" and not release["now"]:
            held.append(route)
        else:
            route.continue_()

    page.on("request", on_request)
    page.route("**/frames/**", hold_lossless)
    page.goto(f"{browser_server.base}/ohif/viewer?StudyInstanceUIDs={studies.ct_study}&hangingprotocolId=mpr")
    state = wait_for(
        page,
        "a volume with a lossy slice",
        lambda: (s := page.evaluate(VOLUME_STATE)) and LOSSY in s["cachedFrames"] and s,
        timeout=90,
    )
    wait_for(page, "a lossless request (held)", lambda: held)
    state = page.evaluate(VOLUME_STATE)
    assert FULL not in state["cachedFrames"], state  # every lossless request is held
    screenshot(page, shots, "ohif-mpr-lossy.png")
    release["now"] = True
    for route in held:
        route.continue_()
    held.clear()
    state = wait_for(
        page,
        "every slice of the volume lossless",
        lambda: (s := page.evaluate(VOLUME_STATE)) and all(q == FULL for q in s["cachedFrames"]) and s,
        timeout=90,
    )
    wait_until_quiet(page, log)
    screenshot(page, shots, "ohif-mpr-lossless.png")
    for k, image_id in enumerate(state["imageIds"]):
        sop = sop_of(image_id)
        voxels = np.asarray(page.evaluate(VOLUME_SLICE, [state["volumeId"], k]), dtype=np.float64)
        meta = httpx.get(
            f"{browser_server.root}/studies/{studies.ct_study}/series/{studies.ct_series}"
            f"/instances/{sop}/metadata",
            timeout=30,
        ).json()[0]
        rescale = {
            "scaled": True,
            "slope": meta["00281053"]["Value"][0],
            "intercept": meta["00281052"]["Value"][0],
        }
        # The volume holds modality values: Rescale Slope and Intercept applied while decoding.
        assert np.array_equal(voxels, expected_pixels(browser_server, studies, sop, rescale)), f"slice {k}"
    lossy = [sop for kind, sop in order if kind == "lossy"]
    assert lossy, order
    for sop in lossy:
        kinds = [kind for kind, s in order if s == sop]
        assert kinds.index("lossy") < kinds.index("lossless"), (sop, kinds)
    assert not log.bad_responses() and not log.failed, log.summary()
