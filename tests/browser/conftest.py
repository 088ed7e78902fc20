"""Browser tests: Debian's headless chromium, driven by Python Playwright, against the real server.

The server is a dedicated one (so the study list holds exactly what these tests stored), loaded through
STOW-RS with a 5-slice CT series made from WG04's 693_UNCR.dcm, pydicom's CT_small.dcm with a structured
report beside it, a lossy original (JPEG baseline) and a study without Modality. Screenshots go to a temporary
folder; DICOMWEB_SCREENSHOTS=docs writes them to docs/ for the README. Without chromium, Playwright or the npm
assets the tests fail and say to run scripts/setup-browser.sh; DICOMWEB_SKIP_BROWSER=1 skips them instead.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from browser_support import PageLog, Studies, screenshot_dir
from pydicom.uid import generate_uid

from dicomweb.static_sites import codec_files, ohif_files
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, new_uids, stow, wait_for_masters

CHROMIUM = Path("/usr/bin/chromium")
# The machine's closed network refuses background connections; these keep chromium from trying.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL (OHIF's renderer) in software, since there is no GPU.
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
]
SETUP = "run scripts/setup-browser.sh (CI runs it), or set DICOMWEB_SKIP_BROWSER=1 to skip the browser tests"
CT_SLICES = 5
CT_DESCRIPTION = "Head CT, WG04 693 (browser tests)"


def missing_prerequisites() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Python package playwright")
    # Looked up as the server does (the same process environment: the server inherits it).
    for located in (codec_files(), ohif_files()):
        if located.get() is None:
            missing.append(
                f"{located.what} ({located.marker} in none of {', '.join(map(str, located.candidates))})"
            )
    return missing


@pytest.fixture(scope="session", autouse=True)
def _browser_prerequisites() -> None:
    if os.environ.get("DICOMWEB_SKIP_BROWSER") == "1":
        pytest.skip("DICOMWEB_SKIP_BROWSER=1")
    if missing := missing_prerequisites():
        pytest.fail(
            "browser tests cannot run, missing: " + "; ".join(missing) + f". To fix: {SETUP}.", pytrace=False
        )


# ---- the server and its studies ------------------------------------------------------------------------


def _shifted(raw: bytes, columns: int) -> bytes:
    """A copy of an uncompressed image with its pixels rolled sideways, so slices differ."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.PixelData = np.roll(ds.pixel_array, columns, axis=1).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct_series_files(study: str, series: str) -> list[bytes]:
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    files = []
    for i in range(CT_SLICES):
        z = f"{47 + 5 * i}"
        files.append(
            new_uids(
                _shifted(raw, 6 * i),
                study=study,
                series=series,
                InstanceNumber=str(i + 1),
                ImagePositionPatient=f"-122.5\\-112.4\\{z}",
                SliceLocation=z,
                StudyDescription=CT_DESCRIPTION,
                SeriesDescription="5 mm axial",
            )
        )
    return files


@pytest.fixture(scope="session")
def browser_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("browser") / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def studies(browser_server: Server) -> Studies:
    with httpx.Client(base_url=browser_server.root, timeout=120) as client:
        site = httpx.get(f"{browser_server.base}/viewer-demo/", timeout=10)
        assert site.status_code == 200, (
            f"GET /viewer-demo/ answered {site.status_code}: wire dicomweb.static_sites.static_routes into "
            "dicomweb/app.py's routes"
        )
        ct_study, ct_series = generate_uid(), generate_uid()
        r = stow(client, ct_series_files(ct_study, ct_series))
        assert r.status_code == 200, r.text
        small = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
        small_study, small_series, sr_series = generate_uid(), generate_uid(), generate_uid()
        lossy_study, lossy_series, no_modality_study = generate_uid(), generate_uid(), generate_uid()
        files = [
            new_uids(
                (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes(), study=small_study, series=small_series
            ),
            # A series without images next to the CT one (same patient, so the study keeps its name).
            new_uids(
                (PYDICOM_TEST_FILES / "test-SR.dcm").read_bytes(),
                study=small_study,
                series=sr_series,
                PatientName=str(small.PatientName),
                PatientID=small.PatientID,
            ),
            # JPEG baseline, Lossy Image Compression 01: kept as received, it never gets a master.
            new_uids(
                (PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes(),
                study=lossy_study,
                series=lossy_series,
                StudyDescription="JPEG baseline RGB (browser tests)",
            ),
            # No Modality (0008,0060) and no patient name: the study's ModalitiesInStudy has no value.
            new_uids(
                (PYDICOM_TEST_FILES / "SC_jpeg_no_color_transform.dcm").read_bytes(), study=no_modality_study
            ),
        ]
        for file in files:
            r = stow(client, [file])
            assert r.status_code == 200, r.text
        wait_for_masters(client)
        sops = [
            i["00080018"]["Value"][0]
            for i in client.get(f"/studies/{ct_study}/series/{ct_series}/instances").json()
        ]
        names = [
            pydicom.dcmread(PYDICOM_DATA / "693_UNCR.dcm").PatientName.family_name,
            small.PatientName.family_name,
            pydicom.dcmread(PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").PatientName.family_name,
        ]
    return Studies(
        ct_study,
        ct_series,
        sops,
        small_study,
        small_series,
        sr_series,
        lossy_study,
        lossy_series,
        no_modality_study,
        names,
    )


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder for screenshots (a temporary one unless DICOMWEB_SCREENSHOTS=docs)."""
    return screenshot_dir(tmp_path_factory.mktemp("screenshots"))


# ---- the browser -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    # Module scope, not session: sync Playwright keeps its own event loop running in this thread until it
    # stops, and the suite's asyncio tests that come after the browser tests need the thread to themselves.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium: Any, browser_server: Server) -> Iterator[Callable[..., tuple[Any, PageLog]]]:
    contexts = []

    def open_page(width: int = 1280, height: int = 800, mobile: bool = False) -> tuple[Any, PageLog]:
        context = chromium.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            is_mobile=mobile,
            has_touch=mobile,
        )
        contexts.append(context)
        page = context.new_page()
        log = PageLog(browser_server.root)

        def on_response(response: Any) -> None:
            if response.url.startswith(log.root):
                log.responses.append(
                    (response.url, response.status, response.headers.get("content-type", ""))
                )

        def on_failed(request: Any) -> None:
            if request.url.startswith(log.root):
                log.failed.append((request.url, request.failure or ""))

        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("console", lambda m: log.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: log.console.append(f"pageerror: {e}"))
        return page, log

    yield open_page
    for context in contexts:
        context.close()
