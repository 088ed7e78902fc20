"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5, 10.4), against the real server.

Pixel values are checked on PNG output at full size (viewport = image size), against references
computed here with pydicom's own Modality LUT and windowing (PS3.3 C.11.2.1.2) and numpy, within one
grey level for rounding. Everything is checked once the masters exist, and the main cases also while
the instance is still stored as received (a server with one master worker kept busy).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing
from pydicom.uid import generate_uid

from storage.render import Viewport, fit, quality_layers, resolution_level
from tests.conftest import (
    PYDICOM_DATA,
    PYDICOM_TEST_FILES,
    Server,
    new_uids,
    parse_multipart,
    stow,
    wait_for_masters,
)

PNG = {"Accept": "image/png"}


@dataclass
class Instance:
    ds: pydicom.Dataset
    url: str  # the instance's WADO-RS URL

    @property
    def size(self) -> tuple[int, int]:
        return int(self.ds.Columns), int(self.ds.Rows)


def instance_url(ds: pydicom.Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def store(client: httpx.Client, data: bytes) -> Instance:
    ds = pydicom.dcmread(io.BytesIO(data))
    r = stow(client, [data])
    assert r.status_code == 200, r.text
    return Instance(ds, instance_url(ds))


def copy_of(name: str, **changes: str) -> bytes:
    return new_uids((PYDICOM_DATA / name).read_bytes(), **changes)


def without_window(name: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(copy_of(name)))
    del ds.WindowCenter, ds.WindowWidth
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def without_pixels(name: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(copy_of(name)))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def wait_for_instances(client: httpx.Client, urls: list[str], timeout: float = 180) -> None:
    """Until each instance has its master (200) or was kept as received (404)."""
    deadline = time.time() + timeout
    for url in urls:
        while client.get(url + "/layers").status_code == 503 and time.time() < deadline:
            time.sleep(0.1)


def image_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def size_of(content: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(content)).size


# ---- references, computed independently of storage/render.py ----------------------------------------


def first_value(value: object) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def reference_grey(ds: pydicom.Dataset, window: tuple[float, float, str] | None = None) -> np.ndarray:
    """Modality LUT, then pydicom's VOI windowing into 0..255, MONOCHROME1 inverted, rounded."""
    return reference_grey_values(ds.pixel_array, ds, window)


def reference_grey_values(
    pixels: np.ndarray, ds: pydicom.Dataset, window: tuple[float, float, str] | None = None
) -> np.ndarray:
    values = apply_modality_lut(pixels, ds)
    voi = Dataset()
    # 8 unsigned bits and no rescale: pydicom's windowing output range is then exactly 0..255.
    voi.PhotometricInterpretation, voi.BitsStored, voi.PixelRepresentation = "MONOCHROME2", 8, 0
    if window is not None:
        voi.WindowCenter, voi.WindowWidth = window[0], window[1]
        voi.VOILUTFunction = window[2].upper().replace("-", "_")
    else:
        voi.WindowCenter, voi.WindowWidth = first_value(ds.WindowCenter), first_value(ds.WindowWidth)
        voi.VOILUTFunction = ds.get("VOILUTFunction", "LINEAR")
    grey = np.clip(np.round(apply_windowing(values, voi)), 0, 255)
    return 255 - grey if ds.PhotometricInterpretation == "MONOCHROME1" else grey


def reference_range(ds: pydicom.Dataset) -> np.ndarray:
    """No window in the dataset: the frame's modality range spread over 0..255."""
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    low, high = values.min(), values.max()
    return np.round((values - low) / (high - low) * 255)


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: int = 1) -> None:
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= tolerance, (
        f"max difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    )


# ---- data: stored once, used after their masters are made ------------------------------------------


@dataclass
class Stored:
    ct: Instance
    cr: Instance
    us: Instance
    ct_no_window: Instance
    mlut: Instance
    vlut: Instance
    palette: Instance
    ybr: Instance
    multiframe: Instance
    lossy: Instance
    no_pixels: Instance
    study: str  # two series: SeriesNumber 2 (one CT) and SeriesNumber 1 (three CTs)
    series_one: list[Instance]


@pytest.fixture(scope="module")
def data(client: httpx.Client) -> Stored:
    study = generate_uid()
    first, second = generate_uid(), generate_uid()
    # Stored in an order that differs from the display order, which the server must restore.
    later = store(
        client, copy_of("693_UNCR.dcm", study=study, series=second, SeriesNumber="2", InstanceNumber="1")
    )
    series_one = [
        store(
            client,
            copy_of("693_UNCR.dcm", study=study, series=first, SeriesNumber="1", InstanceNumber=str(n)),
        )
        for n in (3, 1, 2)
    ]
    series_one.sort(key=lambda i: int(i.ds.InstanceNumber))
    stored = Stored(
        ct=store(client, copy_of("693_UNCR.dcm")),
        cr=store(client, copy_of("RG1_UNCR.dcm")),
        us=store(client, copy_of("US1_UNCR.dcm")),
        ct_no_window=store(client, without_window("693_UNCR.dcm")),
        mlut=store(client, copy_of("mlut_18.dcm")),
        vlut=store(client, copy_of("vlut_04.dcm")),
        palette=store(client, copy_of("OBXXXX1A.dcm")),
        ybr=store(client, copy_of("SC_ybr_full_uncompressed.dcm")),
        multiframe=store(client, copy_of("emri_small.dcm")),
        lossy=store(client, copy_of("color3d_jpeg_baseline.dcm")),
        no_pixels=store(client, without_pixels("693_UNCR.dcm")),
        study=study,
        series_one=series_one,
    )
    assert later.ds.StudyInstanceUID == study
    urls = [i.url for i in vars(stored).values() if isinstance(i, Instance)] + [i.url for i in series_one]
    wait_for_instances(client, urls)
    return stored


# ---- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "viewport", "expected"),
    [
        ("ct", "256,256", (256, 256)),
        ("ct", "300,100", (100, 100)),
        ("cr", "256,256", (241, 256)),  # 1841 x 1955: height limits
        ("cr", "1000,2000", (1000, 1062)),  # width limits
        ("cr", ",512", (482, 512)),  # only the height given
        ("us", "128,128", (128, 96)),
        ("us", "2000,2000", (640, 480)),  # never enlarged
        ("us", None, (640, 480)),  # no viewport: full size
    ],
)
def test_rendered_fits_the_viewport_keeping_aspect(
    client: httpx.Client, data: Stored, which: str, viewport: str | None, expected: tuple[int, int]
) -> None:
    params = {"viewport": viewport} if viewport else {}
    r = client.get(getattr(data, which).url + "/rendered", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"
    assert size_of(r.content) == expected


def test_colour_images_render_in_colour(client: httpx.Client, data: Stored) -> None:
    rgb = image_of(client.get(data.us.url + "/rendered", headers=PNG))
    assert rgb.shape == (480, 640, 3)
    assert np.array_equal(rgb, data.us.ds.pixel_array)
    assert image_of(client.get(data.ct.url + "/rendered", params={"viewport": "64,64"})).ndim == 2


# ---- grey-level pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [None, (40, 400, "linear"), (-600, 1500, "linear"), (40, 80, "linear-exact"), (40, 400, "sigmoid")],
)
def test_ct_windowing_matches_reference(
    client: httpx.Client, data: Stored, window: tuple[float, float, str] | None
) -> None:
    """693_UNCR: signed 14-bit, RescaleIntercept -1024, dataset window 40/100."""
    params = {"viewport": "512,512"}
    if window:
        params["window"] = ",".join(map(str, window))
    got = image_of(client.get(data.ct.url + "/rendered", params=params, headers=PNG))
    assert_close(got, reference_grey(data.ct.ds, window))


def test_window_function_defaults_to_linear(client: httpx.Client, data: Stored) -> None:
    got = image_of(client.get(data.ct.url + "/rendered", params={"window": "40,400"}, headers=PNG))
    assert_close(got, reference_grey(data.ct.ds, (40, 400, "linear")))


@pytest.mark.parametrize("window", [None, (12000, 20000, "linear")])
def test_monochrome1_cr_is_inverted(
    client: httpx.Client, data: Stored, window: tuple[float, float, str] | None
) -> None:
    """RG1_UNCR is MONOCHROME1 (15-bit, window 15000/30000): low values render bright."""
    assert data.cr.ds.PhotometricInterpretation == "MONOCHROME1"
    params = {"viewport": "1841,1955"}
    if window:
        params["window"] = ",".join(map(str, window))
    got = image_of(client.get(data.cr.url + "/rendered", params=params, headers=PNG))
    want = reference_grey(data.cr.ds, window)
    assert_close(got, want)
    darkest = np.unravel_index(np.argmin(data.cr.ds.pixel_array), got.shape)
    assert got[darkest] > 200


def test_no_window_uses_the_frame_range(client: httpx.Client, data: Stored) -> None:
    got = image_of(client.get(data.ct_no_window.url + "/rendered", headers=PNG))
    assert_close(got, reference_range(data.ct_no_window.ds))


def test_modality_lut_sequence(client: httpx.Client, data: Stored) -> None:
    """mlut_18: a Modality LUT Sequence and no window; values spread over their range."""
    assert "ModalityLUTSequence" in data.mlut.ds and "WindowCenter" not in data.mlut.ds
    got = image_of(client.get(data.mlut.url + "/rendered", headers=PNG))
    assert_close(got, reference_range(data.mlut.ds))


def test_voi_lut_sequence(client: httpx.Client, data: Stored) -> None:
    ds = data.vlut.ds
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    want = np.round(apply_voi_lut(ds.pixel_array, ds).astype(np.float64) * 255 / ((1 << bits) - 1))
    assert_close(image_of(client.get(data.vlut.url + "/rendered", headers=PNG)), want)


def test_window_parameter_overrides_the_voi_lut(client: httpx.Client, data: Stored) -> None:
    got = image_of(client.get(data.vlut.url + "/rendered", params={"window": "128,256"}, headers=PNG))
    assert_close(got, reference_grey(data.vlut.ds, (128, 256, "linear")))


def test_enhanced_ct_uses_its_functional_groups(client: httpx.Client) -> None:
    """eCT_Supplemental keeps rescale and window per frame (Pixel Value Transformation, Frame VOI LUT)."""
    image = store(client, copy_of("eCT_Supplemental.dcm"))
    wait_for_instances(client, [image.url])
    ds = image.ds
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds
    shared = ds.SharedFunctionalGroupsSequence[0]
    frame = ds.PerFrameFunctionalGroupsSequence[1]
    groups = (frame, shared)
    rescale = next(
        g.PixelValueTransformationSequence[0] for g in groups if "PixelValueTransformationSequence" in g
    )
    voi = next(g.FrameVOILUTSequence[0] for g in groups if "FrameVOILUTSequence" in g)
    flat = Dataset()
    flat.PhotometricInterpretation = ds.PhotometricInterpretation
    flat.RescaleSlope, flat.RescaleIntercept = rescale.RescaleSlope, rescale.RescaleIntercept
    flat.WindowCenter, flat.WindowWidth = voi.WindowCenter, voi.WindowWidth
    want = reference_grey_values(ds.pixel_array[1], flat)
    assert_close(image_of(client.get(image.url + "/frames/2/rendered", headers=PNG)), want)


# ---- colour ----------------------------------------------------------------------------------------


def test_palette_colour(client: httpx.Client, data: Stored) -> None:
    ds = data.palette.ds
    want = apply_color_lut(ds.pixel_array, ds) >> 8  # 16-bit palette entries
    got = image_of(client.get(data.palette.url + "/rendered", headers=PNG))
    assert np.array_equal(got, want)


def test_ybr_full_becomes_rgb(client: httpx.Client, data: Stored) -> None:
    want = pydicom.pixels.pixel_array(PYDICOM_DATA / "SC_ybr_full_uncompressed.dcm")  # YBR -> RGB
    assert_close(image_of(client.get(data.ybr.url + "/rendered", headers=PNG)), want)


def test_lossy_multiframe_jpeg_frame(client: httpx.Client, data: Stored) -> None:
    """color3d_jpeg_baseline: 120 YBR_FULL_422 frames of lossy JPEG, kept as received."""
    assert client.get(data.lossy.url + "/layers").status_code == 404
    r = client.get(data.lossy.url + "/frames/60/rendered", headers=PNG)
    want = pydicom.pixels.pixel_array(PYDICOM_DATA / "color3d_jpeg_baseline.dcm", index=59)
    assert_close(image_of(r), want)


# ---- source region (viewport vw,vh,sx,sy,sw,sh) -----------------------------------------------------


def test_region_is_cut_then_scaled(client: httpx.Client, data: Stored) -> None:
    full = reference_grey(data.ct.ds)
    exact = client.get(data.ct.url + "/rendered", params={"viewport": "200,100,10,20,200,100"}, headers=PNG)
    assert_close(image_of(exact), full[20:120, 10:210])
    scaled = client.get(data.ct.url + "/rendered", params={"viewport": "100,100,10,20,200,100"})
    assert size_of(scaled.content) == (100, 50)
    to_edge = client.get(data.ct.url + "/rendered", params={"viewport": "1000,1000,500,,,"}, headers=PNG)
    assert_close(image_of(to_edge), full[:, 500:])


def test_negative_region_size_flips(client: httpx.Client, data: Stored) -> None:
    full = reference_grey(data.ct.ds)
    r = client.get(data.ct.url + "/rendered", params={"viewport": "100,50,10,20,-100,-50"}, headers=PNG)
    assert_close(image_of(r), full[20:70, 10:110][::-1, ::-1])


# ---- thumbnails ------------------------------------------------------------------------------------


def test_thumbnails_of_every_level(client: httpx.Client, data: Stored) -> None:
    study = f"/studies/{data.study}"
    middle = data.series_one[1]  # InstanceNumber 2 of the series numbered 1
    series = f"{study}/series/{middle.ds.SeriesInstanceUID}"
    expected = client.get(middle.url + "/thumbnail")
    assert expected.status_code == 200 and expected.headers["content-type"] == "image/jpeg"
    assert size_of(expected.content) == (128, 128)
    for url in (study + "/thumbnail", series + "/thumbnail", middle.url + "/frames/1/thumbnail"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.text)
        # The representative is the middle instance of the first series, rendered the same way.
        assert r.content == expected.content, url


@pytest.mark.parametrize("which", ["ct", "cr", "us", "palette", "multiframe", "lossy", "mlut", "vlut", "ybr"])
def test_thumbnails_fit_the_default_and_given_viewport(
    client: httpx.Client, data: Stored, which: str
) -> None:
    image = getattr(data, which)
    width, height = image.size
    for viewport, box in ((None, 128), ("64,64", 64)):
        r = client.get(image.url + "/thumbnail", params={"viewport": viewport} if viewport else {})
        got = size_of(r.content)
        assert max(got) == min(box, max(width, height)), (which, got)
        assert abs(got[0] / got[1] - width / height) < 0.05


def test_thumbnail_png(client: httpx.Client, data: Stored) -> None:
    r = client.get(data.cr.url + "/thumbnail", headers=PNG)
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_jpeg_thumbnail_of_a_master_skips_layers_png_does_not(client: httpx.Client, data: Stored) -> None:
    """RG1's own window (width 30000) hides its last layer: the JPEG thumbnail decodes 5 of 6."""
    params = {"viewport": "256,256"}
    assert client.get(data.cr.url + "/layers").status_code == 200
    jpeg = [client.get(data.cr.url + suffix, params=params).content for suffix in ("/thumbnail", "/rendered")]
    assert jpeg[0] != jpeg[1] and size_of(jpeg[0]) == size_of(jpeg[1])
    png = [
        client.get(data.cr.url + suffix, params=params, headers=PNG).content
        for suffix in ("/thumbnail", "/rendered")
    ]
    assert png[0] == png[1]


def test_thumbnail_looks_like_the_full_rendering(client: httpx.Client, data: Stored) -> None:
    """The master's reduced level (and fewer layers) against a plain downscale of the full image."""
    thumb = image_of(client.get(data.cr.url + "/thumbnail", params={"viewport": "256,256"}))
    full = Image.fromarray(reference_grey(data.cr.ds).astype(np.uint8))
    want = np.asarray(full.resize((thumb.shape[1], thumb.shape[0]), Image.Resampling.LANCZOS))
    assert np.abs(thumb.astype(int) - want).mean() < 4


# ---- collections and frames ------------------------------------------------------------------------


def test_study_rendered_is_multipart_in_display_order(client: httpx.Client, data: Stored) -> None:
    r = client.get(f"/studies/{data.study}/rendered", params={"viewport": "64,64"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(r)
    assert len(parts) == 4
    order = [h["content-location"].split("/instances/")[1].split("/")[0] for h, _ in parts]
    assert order[:3] == [i.ds.SOPInstanceUID for i in data.series_one]  # SeriesNumber 1 first
    for headers, body in parts:
        assert headers["content-type"] == "image/jpeg" and size_of(body) == (64, 64)


def test_series_rendered_png_parts(client: httpx.Client, data: Stored) -> None:
    series = data.series_one[0].url.split("/instances/")[0]
    r = client.get(
        series + "/rendered",
        params={"viewport": "32,32"},
        headers={"Accept": 'multipart/related; type="image/png"'},
    )
    parts = parse_multipart(r)
    assert len(parts) == 3 and all(h["content-type"] == "image/png" for h, _ in parts)


def test_study_of_several_images_as_one_jpeg_is_406(client: httpx.Client, data: Stored) -> None:
    r = client.get(f"/studies/{data.study}/rendered", headers={"Accept": "image/jpeg"})
    assert r.status_code == 406 and "multipart" in r.json()["error"]


def test_frames_rendered(client: httpx.Client, data: Stored) -> None:
    url = data.multiframe.url
    frames = pydicom.pixels.pixel_array(PYDICOM_DATA / "emri_small.dcm")
    single = client.get(url + "/frames/3/rendered", headers=PNG)
    assert single.headers["content-type"] == "image/png"
    assert image_of(single).shape == frames[2].shape
    several = client.get(url + "/frames/1,3/rendered")
    assert several.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    assert len(parse_multipart(several)) == 2
    assert client.get(url + "/frames/11/rendered").status_code == 404
    assert client.get(url + "/frames/0/rendered").status_code == 400
    assert client.get(url + "/frames/x/rendered").status_code == 400


def test_many_frames_stream_in_order(client: httpx.Client, data: Stored) -> None:
    """120 frames: more than are rendered before answering, so most are rendered while streaming."""
    r = client.get(
        data.lossy.url + "/rendered",
        params={"viewport": "40,40"},
        headers={"Accept": "multipart/related; type=image/jpeg"},
    )
    assert r.status_code == 200
    parts = parse_multipart(r)
    assert [h["content-location"].rsplit("/", 2)[1] for h, _ in parts] == [str(n) for n in range(1, 121)]
    assert all(size_of(body) == (40, 30) for _, body in parts)


def test_multiframe_instance_is_its_first_frame_or_all_frames(client: httpx.Client, data: Stored) -> None:
    url = data.multiframe.url + "/rendered"
    assert client.get(url).content == client.get(data.multiframe.url + "/frames/1/rendered").content
    every = client.get(url, headers={"Accept": "multipart/related; type=image/jpeg"})
    assert len(parse_multipart(every)) == 10


# ---- negotiation, parameters and errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "expected"),
    [
        ({}, {}, "image/jpeg"),
        ({"Accept": "*/*"}, {}, "image/jpeg"),
        ({"Accept": "image/*"}, {}, "image/jpeg"),
        ({"Accept": "image/png"}, {}, "image/png"),
        ({"Accept": "image/jpeg;q=0.5, image/png"}, {}, "image/png"),
        ({"Accept": "image/webp, image/png;q=0.9, */*;q=0.8"}, {}, "image/png"),
        ({"Accept": "application/dicom"}, {"accept": "image/png"}, "image/png"),
        ({}, {"accept": "image/jpeg"}, "image/jpeg"),
    ],
)
def test_accept(client: httpx.Client, data: Stored, headers: dict, params: dict, expected: str) -> None:
    r = client.get(data.ct.url + "/rendered", headers=headers, params={**params, "viewport": "32,32"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom",
        "image/gif",
        "application/octet-stream",
        'multipart/related; type="application/dicom"',
    ],
)
def test_unavailable_media_type_is_406(client: httpx.Client, data: Stored, accept: str) -> None:
    assert client.get(data.ct.url + "/rendered", headers={"Accept": accept}).status_code == 406
    assert client.get(data.ct.url + "/thumbnail", headers={"Accept": accept}).status_code == 406


@pytest.mark.parametrize(
    "params",
    [
        {"viewport": "0,10"},
        {"viewport": "a,b"},
        {"viewport": "10"},
        {"viewport": "10,10,1,2,3"},
        {"viewport": "10,10,-1,0,5,5"},
        {"viewport": "10,10,0,0,0,5"},
        {"viewport": "10,10,600,0,10,10"},
        {"window": "40"},
        {"window": "40,0"},
        {"window": "40,0.5,linear"},
        {"window": "a,b"},
        {"window": "40,400,cubic"},
        {"window": "40,-1,sigmoid"},
        {"window": "nan,400"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "high"},
    ],
)
def test_bad_parameters_are_400(client: httpx.Client, data: Stored, params: dict) -> None:
    r = client.get(data.ct.url + "/rendered", params=params)
    assert r.status_code == 400, (params, r.status_code)
    assert r.json()["error"]


def test_thumbnail_viewport_is_vw_vh_only(client: httpx.Client, data: Stored) -> None:
    assert client.get(data.ct.url + "/thumbnail", params={"viewport": "10,10,0,0,5,5"}).status_code == 400


def test_ignored_parameters(client: httpx.Client, data: Stored) -> None:
    params = {"annotation": "patient,technique", "charset": "UTF-8", "iccprofile": "no", "viewport": "32,32"}
    assert client.get(data.ct.url + "/rendered", params=params).status_code == 200


def test_quality(client: httpx.Client, data: Stored) -> None:
    low = client.get(data.cr.url + "/rendered", params={"quality": "10", "viewport": "512,512"})
    high = client.get(data.cr.url + "/rendered", params={"quality": "95", "viewport": "512,512"})
    assert len(low.content) < len(high.content) / 2


def test_no_pixel_data_is_406(client: httpx.Client, data: Stored) -> None:
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        r = client.get(data.no_pixels.url + suffix)
        assert r.status_code in (406, 404), suffix
    assert client.get(data.no_pixels.url + "/rendered").status_code == 406


def test_undecodable_image(client: httpx.Client) -> None:
    """JPEG-lossy.dcm (12-bit extended JPEG) has no working decoder here."""
    study, series = generate_uid(), generate_uid()
    good = store(client, copy_of("693_UNCR.dcm", study=study, series=series, InstanceNumber="1"))
    bad = store(
        client,
        new_uids(
            (PYDICOM_TEST_FILES / "JPEG-lossy.dcm").read_bytes(),
            study=study,
            series=series,
            InstanceNumber="2",
        ),
    )
    r = client.get(bad.url + "/rendered")
    assert r.status_code == 406 and "cannot decode" in r.json()["error"]
    r = client.get(f"/studies/{study}/series/{series}/rendered", params={"viewport": "32,32"})
    assert r.status_code == 206 and "1 image(s) left out" in r.headers["warning"]
    [(headers, _)] = parse_multipart(r)
    assert good.ds.SOPInstanceUID in headers["content-location"]


def test_unknown_and_malformed(client: httpx.Client, data: Stored) -> None:
    study = data.ct.ds.StudyInstanceUID
    assert client.get(f"/studies/{generate_uid()}/rendered").status_code == 404
    assert client.get(f"/studies/{study}/series/{generate_uid()}/thumbnail").status_code == 404
    assert client.get(f"/studies/{study}/series/1.2/instances/{generate_uid()}/rendered").status_code == 404
    assert client.get("/studies/not-a-uid/thumbnail").status_code == 400


# ---- caching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix", ["/rendered?viewport=100,100", "/thumbnail", "/frames/1/rendered?window=0,100"]
)
def test_etag_and_304(client: httpx.Client, data: Stored, suffix: str) -> None:
    url = data.ct.url + suffix
    first, second = client.get(url), client.get(url)
    assert first.content == second.content
    etag = first.headers["etag"]
    assert etag == second.headers["etag"] and etag.startswith('"')
    assert first.headers["cache-control"] == "private, max-age=3600"
    for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = client.get(url, headers={"If-None-Match": condition})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_etag_follows_the_parameters(client: httpx.Client, data: Stored) -> None:
    tags = {
        client.get(data.ct.url + "/rendered", params=params, headers=headers).headers["etag"]
        for params, headers in [
            ({}, {}),
            ({"viewport": "64,64"}, {}),
            ({"window": "0,100"}, {}),
            ({"quality": "50"}, {}),
            ({}, PNG),
        ]
    }
    assert len(tags) == 5


def test_identical_multipart_requests_give_identical_bytes(client: httpx.Client, data: Stored) -> None:
    url = f"/studies/{data.study}/rendered?viewport=48,48"
    assert client.get(url).content == client.get(url).content


# ---- while the master is pending, and after -------------------------------------------------------


def test_rendering_while_pending_and_after(tmp_path: Path) -> None:
    """One master worker, busy with two big CRs: the CT stays as received meanwhile. (No /layers probe
    while pending: asking for the fidelity ladder hurries the master.)"""
    server = Server(tmp_path / "data", extra_env={"DICOMWEB_WORKERS": "1"})
    try:
        with httpx.Client(base_url=server.root, timeout=120) as client:
            assert stow(client, [copy_of("RG1_UNCR.dcm"), copy_of("RG1_UNCR.dcm")]).status_code == 200
            ct = store(client, copy_of("693_UNCR.dcm"))
            cr = store(client, copy_of("RG3_UNCR.dcm"))

            full = client.get(ct.url + "/rendered", params={"window": "40,400"}, headers=PNG)
            thumb = client.get(ct.url + "/thumbnail")
            small = client.get(cr.url + "/rendered", params={"viewport": "256,256"})
            cr_full = client.get(cr.url + "/rendered", headers=PNG)
            study = client.get(f"/studies/{ct.ds.StudyInstanceUID}/thumbnail")

            assert_close(image_of(full), reference_grey(ct.ds, (40, 400, "linear")))
            assert_close(image_of(cr_full), reference_grey(cr.ds))
            assert size_of(thumb.content) == (128, 128) and size_of(small.content) == (256, 256)
            assert study.content == thumb.content

            wait_for_masters(client)
            assert client.get(ct.url + "/layers").status_code == 200

            # Full size decodes every layer of every level: the same pixels, the same PNG.
            after = client.get(ct.url + "/rendered", params={"window": "40,400"}, headers=PNG)
            assert after.content == full.content
            assert client.get(cr.url + "/rendered", headers=PNG).content == cr_full.content
            # A new blob, so a new ETag: caches do not mix the two renderings.
            thumb_after = client.get(ct.url + "/thumbnail")
            assert thumb_after.headers["etag"] != thumb.headers["etag"]
            assert size_of(thumb_after.content) == (128, 128)
            small_after = client.get(cr.url + "/rendered", params={"viewport": "256,256"})
            assert size_of(small_after.content) == (256, 256)
            diff = np.abs(image_of(small_after).astype(int) - image_of(small).astype(int))
            assert diff.mean() < 4
    finally:
        server.stop()


# ---- the level and layer rules of storage/render.py ------------------------------------------------


@pytest.mark.parametrize(
    ("viewport", "drop"),
    [
        ((1841, 1955), 0),
        ((1000, 1000), 0),
        ((921, 978), 1),
        ((256, 256), 2),
        ((128, 128), 3),
        ((100, 100), 4),
        ((60, 60), 5),
        ((10, 10), 5),
    ],
)
def test_resolution_level_is_the_smallest_not_smaller_than_the_output(
    viewport: tuple[int, int], drop: int
) -> None:
    """RG1 (1841 x 1955, 5 levels): level D is ceil(size / 2^D); never decode below the output size."""
    geometry = fit(1841, 1955, Viewport(*viewport))
    assert resolution_level(geometry, levels=5) == drop
    out_w, out_h = geometry.size
    level = [(-(-1841 // 2**d), -(-1955 // 2**d)) for d in range(6)]
    assert level[drop][0] >= out_w and level[drop][1] >= out_h
    if drop < 5:
        assert level[drop + 1][0] < out_w or level[drop + 1][1] < out_h


def test_quality_layers_rule() -> None:
    errors = (1676, 875, 581, 319, 102, 0)  # RG1's measured ladder
    assert quality_layers(errors, None) is None  # unknown gain: every layer
    assert (
        quality_layers(errors, 255 / 29999) == 5
    )  # its own window (30000): layer 4 errs 2.7 levels, 5 errs 0.9
    assert quality_layers(errors, 255 / 100) is None  # a narrow window needs them all
    assert quality_layers(errors, 255 / 10**6) == 1
