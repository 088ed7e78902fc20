"""Rendered windowing against the formulas of PS3.3 C.11.2.1.2 and C.11.2.1.3, written out here in numpy
(float64, no pydicom windowing), after each frame's Rescale Slope and Intercept (PS3.3 C.11.1), those of the
frame's functional groups for multi-frame images (PS3.3 C.7.6.16.2.9).

Every 8-bit output pixel (PNG, full size, so neither JPEG nor resampling moves it) must be within 1 of the
exact value y of the formula, with y_min = 0 and y_max = 255; MONOCHROME1 shows 255 - y. Each case is checked
on the instance as received and again once its master is made.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.conftest import PYDICOM_DATA, new_uids, stow, wait_for_masters

PNG = {"Accept": "image/png"}


# ---- the standard's formulas ------------------------------------------------------------------------


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.2.1: if x <= c - 0.5 - (w-1)/2, y = y_min; else if x > c - 0.5 + (w-1)/2, y = y_max;
    else y = ((x - (c - 0.5)) / (w-1) + 0.5) * (y_max - y_min) + y_min."""
    y = np.empty(x.shape, np.float64)
    low = x <= c - 0.5 - (w - 1) / 2
    high = x > c - 0.5 + (w - 1) / 2
    ramp = ~low & ~high
    y[low], y[high] = 0.0, 255.0
    y[ramp] = ((x[ramp] - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return y


def linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.3.2: if x <= c - w/2, y = y_min; else if x > c + w/2, y = y_max;
    else y = ((x - c) / w + 0.5) * (y_max - y_min) + y_min."""
    y = np.empty(x.shape, np.float64)
    low = x <= c - w / 2
    high = x > c + w / 2
    ramp = ~low & ~high
    y[low], y[high] = 0.0, 255.0
    y[ramp] = ((x[ramp] - c) / w + 0.5) * 255.0
    return y


def sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.3.1: y = (y_max - y_min) / (1 + exp(-4 (x - c) / w)) + y_min."""
    with np.errstate(over="ignore"):
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))


FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "linear": linear,
    "linear-exact": linear_exact,
    "sigmoid": sigmoid,
}


def expected(
    stored: np.ndarray,
    slope: float,
    intercept: float,
    window: tuple[float, float, str],
    monochrome1: bool = False,
) -> np.ndarray:
    x = stored.astype(np.float64) * slope + intercept  # C.11.1.1.2: the Modality LUT is the rescale
    y = FUNCTIONS[window[2]](x, window[0], window[1])
    return 255.0 - y if monochrome1 else y


def assert_within_one(got: np.ndarray, exact: np.ndarray, what: str) -> None:
    assert got.shape == exact.shape, (what, got.shape, exact.shape)
    diff = np.abs(got.astype(np.float64) - exact)
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() <= 1.0, (
        f"{what}: off by {diff.max():.3f} at {worst}: got {got[worst]}, exact {exact[worst]:.4f}"
    )


# ---- the images -----------------------------------------------------------------------------------


@dataclass
class Image_:
    ds: Dataset
    url: str


def store(client: httpx.Client, data: bytes) -> Image_:
    ds = pydicom.dcmread(io.BytesIO(data))
    response = stow(client, [data])
    assert response.status_code == 200, response.text
    return Image_(
        ds, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


def save(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# Per frame: (slope, intercept). Fractional values, one negative slope and one large intercept, so a
# rescale that is skipped, shared between frames or computed in low precision shows.
FRAME_RESCALES = [
    (1.0, 0.0),
    (0.5, -100.25),
    (2.0, 1000.0),
    (0.37, 12.5),
    (1.25, -32768.0),
    (-1.0, 4095.0),
    (3.0, 0.0),
    (0.1, -3.3),
    (1.0, 100000.0),
    (4.5, -2.25),
]


def enhanced_multiframe(top_level_rescale: bool) -> bytes:
    """emri_small (10 frames of 64x64, 16 bits) with a Pixel Value Transformation per frame and a Frame VOI
    LUT shared by all frames, as an enhanced IOD keeps them (PS3.3 C.7.6.16). With `top_level_rescale`,
    also a top-level Rescale Slope/Intercept that the functional groups must override."""
    ds = pydicom.dcmread(io.BytesIO(new_uids((PYDICOM_DATA / "emri_small.dcm").read_bytes())))
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    if top_level_rescale:
        ds.RescaleSlope, ds.RescaleIntercept = "7", "-7000"
    per_frame = []
    for slope, intercept in FRAME_RESCALES:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (
            str(slope),
            str(intercept),
            "US",
        )
        group = Dataset()
        group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "600", "1200"
    shared = Dataset()
    shared.FrameVOILUTSequence = Sequence([voi])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return save(ds)


@pytest.fixture(scope="module")
def images(client: httpx.Client) -> dict[str, Image_]:
    return {
        "ct": store(client, new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes())),
        "cr": store(client, new_uids((PYDICOM_DATA / "RG1_UNCR.dcm").read_bytes())),
        "enhanced": store(client, enhanced_multiframe(top_level_rescale=False)),
        "enhanced_top": store(client, enhanced_multiframe(top_level_rescale=True)),
    }


def rendered(client: httpx.Client, url: str, window: tuple[float, float, str] | None) -> np.ndarray:
    params = {"window": f"{window[0]!r},{window[1]!r},{window[2]}"} if window else {}
    response = client.get(url, params=params, headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def frame_pixels(ds: Dataset, number: int) -> np.ndarray:
    pixels = ds.pixel_array
    return pixels[number - 1] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels


CT_WINDOWS = [
    (40.0, 400.0, "linear"),
    (40.5, 1.0, "linear"),
    (-1000.25, 2.0, "linear"),
    (1023.7, 3.3, "linear"),
    (300.0, 0.5, "linear-exact"),
    (35.7, 80.3, "linear-exact"),
    (40.0, 1e-3, "linear-exact"),
    (0.0, 4000.0, "sigmoid"),
    (50.0, 0.25, "sigmoid"),
    (-3000.0, 10.0, "sigmoid"),
    (1e6, 10.0, "linear"),
    (-2048.0, 65536.0, "linear"),
    (12.125, 7.75, "linear"),
]


def check_ct(client: httpx.Client, image: Image_, window: tuple[float, float, str], state: str) -> None:
    ds = image.ds
    exact = expected(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept), window)
    assert_within_one(rendered(client, image.url + "/rendered", window), exact, f"CT {window} {state}")


@pytest.mark.parametrize("window", CT_WINDOWS, ids=str)
def test_ct_window_functions(client: httpx.Client, images: dict[str, Image_], window) -> None:
    """693_UNCR: signed 16 bits, Rescale Intercept -1024."""
    check_ct(client, images["ct"], window, "as received or master")
    wait_for_masters(client)
    check_ct(client, images["ct"], window, "master")


@pytest.mark.parametrize(
    "window",
    [(15000.0, 30000.0, "linear"), (12000.5, 2.0, "linear-exact"), (16000.0, 5000.0, "sigmoid")],
    ids=str,
)
def test_monochrome1_cr(client: httpx.Client, images: dict[str, Image_], window) -> None:
    """RG1_UNCR: MONOCHROME1, 15 bits: the output is 255 - y."""
    ds = images["cr"].ds
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    wait_for_masters(client)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    exact = expected(ds.pixel_array, slope, intercept, window, monochrome1=True)
    assert_within_one(rendered(client, images["cr"].url + "/rendered", window), exact, f"CR {window}")


MULTIFRAME_WINDOWS = [
    None,
    (600.0, 1200.0, "linear"),
    (0.0, 50.0, "linear-exact"),
    (2000.0, 800.0, "sigmoid"),
    (100100.0, 300.0, "linear"),
]


@pytest.mark.parametrize("which", ["enhanced", "enhanced_top"])
@pytest.mark.parametrize("window", MULTIFRAME_WINDOWS, ids=str)
def test_each_frame_with_its_own_rescale(
    client: httpx.Client, images: dict[str, Image_], which: str, window: tuple[float, float, str] | None
) -> None:
    """Per-frame Pixel Value Transformation (functional groups), with the shared Frame VOI LUT when no window
    is asked for; a top-level rescale does not apply where the frame has its own."""
    image = images[which]
    for state in ("as received or master", "master"):
        if state == "master":
            wait_for_masters(client)
        for number, (slope, intercept) in enumerate(FRAME_RESCALES, start=1):
            stored = frame_pixels(image.ds, number)
            exact = expected(stored, slope, intercept, window or (600.0, 1200.0, "linear"))
            got = rendered(client, f"{image.url}/frames/{number}/rendered", window)
            assert_within_one(got, exact, f"{which} frame {number} {window} {state}")


def test_every_frame_of_the_instance_as_multipart(client: httpx.Client, images: dict[str, Image_]) -> None:
    """`.../rendered` asked for as multipart gives every frame, each with its own rescale."""
    from tests.conftest import parse_multipart

    image = images["enhanced"]
    window = (0.0, 50.0, "linear-exact")
    response = client.get(
        image.url + "/rendered",
        params={"window": "0,50,linear-exact"},
        headers={"Accept": 'multipart/related; type="image/png"'},
    )
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    assert len(parts) == len(FRAME_RESCALES)
    for number, ((_headers, body), (slope, intercept)) in enumerate(
        zip(parts, FRAME_RESCALES, strict=True), 1
    ):
        got = np.asarray(Image.open(io.BytesIO(body)))
        exact = expected(frame_pixels(image.ds, number), slope, intercept, window)
        assert_within_one(got, exact, f"multipart frame {number}")
