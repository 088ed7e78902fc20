"""The viewers with authentication on: a server that accepts only OIDC tokens from a local test issuer, OHIF
given a bearer token (its `?token=` viewer parameter, as a portal launching it would) and the viewer demo
given one the same way."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from browser_support import PageLog
from pydicom.uid import generate_uid
from test_ohif import NO_TOUR, wait_for_image, wait_until_quiet

from tests.auth_support import AUDIENCE, Issuer
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, multipart_body, new_uids

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary-1234'


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    idp = Issuer()
    yield idp
    idp.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[tuple[Server, str, str]]:
    srv = Server(
        tmp_path_factory.mktemp("browser-auth") / "data",
        {"DICOMWEB_OIDC_ISSUER": issuer.url, "DICOMWEB_OIDC_AUDIENCE": AUDIENCE},
    )
    study, series = generate_uid(), generate_uid()
    files = [
        new_uids(
            (PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study, series=series, InstanceNumber="1"
        ),
        new_uids(
            (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes(), study=study, series=series, InstanceNumber="2"
        ),
    ]
    token = issuer.token(scope="dicomweb.read dicomweb.write dicomweb.admin")
    with httpx.Client(base_url=srv.root, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        for f in files:
            r = client.post("/studies", content=multipart_body([f]), headers={"Content-Type": STOW_TYPE})
            assert r.status_code == 200, r.text
        deadline = time.time() + 300
        while client.get("/status").json()["pending_masters"] and time.time() < deadline:
            time.sleep(0.2)
    yield srv, study, series
    srv.stop()


@pytest.fixture
def page_log(chromium: Any, secured: tuple[Server, str, str]) -> Iterator[tuple[Any, PageLog]]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    log = PageLog(secured[0].root)
    page.on(
        "response",
        lambda r: (
            log.responses.append((r.url, r.status, r.headers.get("content-type", "")))
            if r.url.startswith(log.root)
            else None
        ),
    )
    page.on(
        "requestfailed",
        lambda r: log.failed.append((r.url, r.failure or "")) if r.url.startswith(log.root) else None,
    )
    yield page, log
    context.close()


def test_ohif_loads_a_study_with_a_bearer_token(
    page_log: tuple[Any, PageLog], secured: tuple[Server, str, str], issuer: Issuer
) -> None:
    srv, study, _ = secured
    page, log = page_log
    page.context.add_init_script(NO_TOUR)
    page.goto(f"{srv.base}/ohif/viewer?{urlencode({'StudyInstanceUIDs': study, 'token': issuer.token()})}")
    spread = wait_for_image(page)
    wait_until_quiet(page, log)
    assert spread > 10, f"the viewport stayed blank; {log.summary()}"
    assert not log.bad_responses() and not log.failed, log.summary()
    assert any("/frames/" in url for url, _, _ in log.responses), log.summary()
    assert "token=" not in page.url  # OHIF takes it out of the address bar


def test_ohif_without_a_token_gets_nothing(
    page_log: tuple[Any, PageLog], secured: tuple[Server, str, str]
) -> None:
    srv, study, _ = secured
    page, log = page_log
    page.context.add_init_script(NO_TOUR)
    page.goto(f"{srv.base}/ohif/viewer?StudyInstanceUIDs={study}")
    deadline = time.time() + 30
    while not log.responses and time.time() < deadline:
        page.wait_for_timeout(250)
    assert log.responses and all(status == 401 for _, status, _ in log.responses), log.summary()


def test_viewer_demo_with_a_token(
    page_log: tuple[Any, PageLog], secured: tuple[Server, str, str], issuer: Issuer
) -> None:
    srv, study, series = secured
    page, log = page_log
    page.goto(
        f"{srv.base}/viewer-demo/?{urlencode({'token': issuer.token(), 'study': study, 'series': series})}"
    )
    condition = "s.view === 'viewer' && s.done && !!s.pixelsSha256"
    try:
        page.wait_for_function(
            f"() => {{ const s = window.viewerState; return !!s && ({condition}); }}", timeout=60_000
        )
    except Exception as exc:
        raise AssertionError(
            f"{exc}: {json.dumps(page.evaluate('window.viewerState'))[:1500]}; {log.summary()}"
        ) from exc
    assert "token=" not in page.url
    assert not log.bad_responses(), log.summary()
