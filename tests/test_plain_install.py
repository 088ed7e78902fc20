"""What a new user gets from the README's install: `pip install .` into an empty virtual environment,
no extras, then `dicomweb serve` started outside the checkout.

The rest of the suite runs with the test extras installed, which once hid a missing dependency (glymur
imports `packaging` without declaring it): every test passed while a plain install could not make a
single master. This test installs the project as a user does and checks the product's main feature,
a layered master and a cut of it, end to end over HTTP.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYDICOM_TEST_FILES, Server, new_uids, stow

CHECKOUT = Path(__file__).resolve().parents[1]
# Not copied into the build: local environments, installed browser assets, caches.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    ".ohif",
    "__pycache__",
    "*.egg-info",
    "build",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "dicomweb-data",
)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty venv with the project installed from a copy of the checkout, without extras."""
    root = tmp_path_factory.mktemp("plain-install")
    source = root / "source"
    shutil.copytree(CHECKOUT, source, ignore=IGNORED)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    # Nothing from the test extras leaked in: this is what a user has.
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pytest"], check=False, capture_output=True
    )
    assert probe.returncode != 0, "pytest is importable in the plain venv"
    return venv


@pytest.fixture(scope="module")
def plain_server(plain_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dicomweb serve` from the plain venv, started in an empty folder (not the checkout)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    # An empty per-user data folder: a developer's own npm assets must not change what this test sees.
    server = Server(
        elsewhere / "data",
        {"XDG_DATA_HOME": str(elsewhere / "xdg")},
        program=[str(plain_venv / "bin" / "dicomweb")],
        cwd=elsewhere,
        start_timeout=60,
    )
    yield server.base
    server.stop()


def test_plain_install_makes_masters_and_cuts(plain_server: str) -> None:
    data = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
    with httpx.Client(base_url=plain_server + "/dicom-web", timeout=60) as client:
        r = stow(client, [data])
        assert r.status_code == 200, r.text
        url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        deadline = time.time() + 120
        while (layers := client.get(url + "/layers")).status_code == 503 and time.time() < deadline:
            time.sleep(0.2)
        assert layers.status_code == 200, f"no master: {layers.status_code} {layers.text}"
        assert layers.json()["frames"][0]["layers"][-1]["lossless"] is True
        status = client.get("/status").json()
        assert status["kept_as_received"] == 0, status
        cut = client.get(url + "/frames/1?layers=1", headers={"Accept": "image/jp2"})
        assert cut.status_code == 200, cut.text
        assert "transfer-syntax=1.2.840.10008.1.2.4.91" in cut.headers["content-type"]
        assert cut.content[:4] == b"\xff\x4f\xff\x51"  # a J2K codestream: SOC then SIZ


VIEWER_PAGES = (
    "",
    "index.html",
    "app.js",
    "loader.js",
    "net.js",
    "render.js",
    "decoder.js",
    "decode-worker.js",
    "style.css",
    "config.js",
)


def test_plain_install_serves_the_viewer_pages_from_anywhere(plain_server: str) -> None:
    """The viewer demo's pages ship with the package; the npm assets (OHIF, the WebAssembly decoder) are
    not installed here, and their pages say how to install them instead of a bare error."""
    with httpx.Client(base_url=plain_server, timeout=30) as client:
        assert client.get("/").status_code == 200
        for page in VIEWER_PAGES:
            r = client.get(f"/viewer-demo/{page}")
            assert r.status_code == 200, (page, r.status_code)
        assert client.get("/viewer-demo/").headers["content-type"].startswith("text/html")
        for page in ("", "admin.js", "admin.css"):  # the storage economics page ships too
            assert client.get(f"/admin/{page}").status_code == 200, page
        ohif = client.get("/ohif/")
        assert ohif.status_code == 503 and "npm pack @ohif/app@" in ohif.text
        codec = client.get("/viewer-demo/codec/openjpegwasm_decode.js")
        assert codec.status_code == 404 and "npm install --prefix" in codec.text
