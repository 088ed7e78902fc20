"""How /viewer-demo/ and the OHIF mounts are served (HTTP only, no browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

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


@pytest.mark.parametrize("mount", ["/ohif", "/ohif-progressive"])
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
    assert "window.location.origin + \"/dicom-web\"" in config
    progressive = "image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202" in config
    assert progressive == (mount == "/ohif-progressive")
