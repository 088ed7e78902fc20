"""How /, /viewer-demo/ and the OHIF mounts are served (HTTP only, no browser), and where their files are."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser_support import REPO

from dicomweb import static_sites
from tests.conftest import Server


@pytest.fixture(scope="module")
def site(browser_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=browser_server.base, timeout=30) as client:
        yield client


def test_viewer_demo_files(site: httpx.Client) -> None:
    assert site.get("/viewer-demo", follow_redirects=False).headers["location"] == "/viewer-demo/"
    moved = site.get("/viewer-demo?study=1.2.3", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/viewer-demo/?study=1.2.3"
    page = site.get("/viewer-demo/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    config = site.get("/viewer-demo/config.js")
    assert config.headers["content-type"].startswith("text/javascript")
    assert '"root": "/dicom-web"' in config.text
    wasm = site.get("/viewer-demo/codec/openjpegwasm_decode.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.content[:4] == b"\0asm"
    assert site.get("/viewer-demo/codec/%2e%2e/package.json").status_code == 404
    assert site.get("/viewer-demo/nothing.js").status_code == 404
    etag = page.headers["etag"]
    assert site.get("/viewer-demo/", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("mount", ["/ohif", "/ohif-single", "/ohif-progressive"])
def test_ohif_mount(site: httpx.Client, mount: str) -> None:
    assert site.get(mount, follow_redirects=False).headers["location"] == mount + "/"
    index = site.get(mount + "/")
    assert index.status_code == 200
    assert f'window.PUBLIC_URL="{mount}/"' in index.text
    bundles = re.findall(r'src="([^"]+\.js)"', index.text)
    assert bundles and all(b.startswith(mount + "/") for b in bundles), bundles
    # Client-side routes get index.html; missing assets get 404.
    route = site.get(mount + "/viewer?StudyInstanceUIDs=1.2.3")
    assert route.status_code == 200 and route.text == index.text
    assert site.get(mount + "/no-such-bundle.js").status_code == 404
    app = site.get(mount + "/" + bundles[-1].rsplit("/", 1)[1])
    assert app.status_code == 200
    assert '__webpack_require__.p = "/";' not in app.text  # chunks load from the mount, not the root
    config = site.get(mount + "/app-config.js").text
    assert f'"routerBasename": "{mount}"' in config
    assert 'window.location.origin + "/dicom-web"' in config
    progressive = "image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202" in config
    assert progressive == (mount == "/ohif-progressive")
    if progressive:  # instances without a master (lossy originals) come as stored instead
        assert "type=application/octet-stream; transfer-syntax=*; q=0.5" in config
    # /ohif/ alone loads each slice in two stages: a quality-layer cut first (LOSSY), then the master.
    assert ('"urlArguments": "layers=preview"' in config) == (mount == "/ohif"), config
    assert '"thumbnailRendering": "thumbnail"' in config and '"thumbnailRequestStrategy": "fetch"' in config


def test_landing_page(site: httpx.Client) -> None:
    page = site.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for link in (
        'href="viewer-demo/"',
        'href="ohif/"',
        'href="ohif-single/"',
        'href="ohif-progressive/"',
        'href="dicom-web/studies"',
        'href="admin/"',
    ):
        assert link in page.text, link
    assert "not installed" not in page.text


def test_missing_assets_say_how_to_install(tmp_path: Path) -> None:
    """With the npm assets absent, the pages name the folders looked in and commands that install them
    there; files put there while the server runs are found without a restart."""
    assets, dist = tmp_path / "assets", tmp_path / "ohif-dist"
    env = {"DICOMWEB_VIEWER_DEMO_DIR": str(assets), "DICOMWEB_OHIF_DIST": str(dist)}
    (tmp_path / "data").mkdir()
    server = Server(tmp_path / "data", extra_env=env)
    try:
        with httpx.Client(base_url=server.base, timeout=30) as site:
            assert site.get("/viewer-demo/").status_code == 200  # the pages come with the package
            ohif = site.get("/ohif/")
            assert ohif.status_code == 503 and str(dist) in ohif.text, ohif.text
            assert f"npm pack @ohif/app@{static_sites.OHIF_VERSION}" in ohif.text
            codec = site.get("/viewer-demo/codec/openjpegwasm_decode.js")
            assert codec.status_code == 404
            assert f"npm install --prefix {assets} " in codec.text, codec.text
            assert "not installed" in site.get("/").text

            dist.mkdir()
            (dist / "index.html").write_text(
                '<script>window.PUBLIC_URL="/";</script><script src="/app.js"></script>'
            )
            codec_dir = assets / static_sites.CODEC_SUBDIR
            codec_dir.mkdir(parents=True)
            (codec_dir / "openjpegwasm_decode.js").write_text("// decoder")
            ohif = site.get("/ohif/")
            assert ohif.status_code == 200 and 'src="/ohif/app.js"' in ohif.text, ohif.text
            assert site.get("/viewer-demo/codec/openjpegwasm_decode.js").text == "// decoder"
    finally:
        server.stop()


def test_versions_in_step() -> None:
    """The versions the "not installed" hints name are those scripts/setup-browser.sh and the lock install."""
    script = (REPO / "scripts/setup-browser.sh").read_text()
    assert f"OHIF_VERSION=${{OHIF_VERSION:-{static_sites.OHIF_VERSION}}}" in script
    lock = json.loads((REPO / "viewer-demo/package-lock.json").read_text())
    entry = lock["packages"][f"node_modules/{static_sites.CODEC_PACKAGE}"]
    assert entry["version"] == static_sites.CODEC_VERSION


def test_package_ships_every_module_and_the_viewer_pages() -> None:
    """pyproject.toml lists the packages by hand (to map viewer-demo/web into the package): none forgotten."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = {
        str(p.parent.relative_to(REPO)).replace("/", ".")
        for top in ("dicomweb", "storage")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == modules | {"dicomweb.viewer_web", "dicomweb.admin_web"}
    web = REPO / setuptools["package-dir"]["dicomweb.viewer_web"]
    assert web == REPO / "viewer-demo/web"
    patterns = setuptools["package-data"]["dicomweb.viewer_web"]
    assert all(any(f.match(p) for p in patterns) for f in web.iterdir()), sorted(
        f.name for f in web.iterdir()
    )
    admin = REPO / "dicomweb/admin_web"
    patterns = setuptools["package-data"]["dicomweb.admin_web"]
    assert all(any(f.match(p) for p in patterns) for f in admin.iterdir()), sorted(
        f.name for f in admin.iterdir()
    )
