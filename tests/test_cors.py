"""CORS for browser viewers on another origin: Range, Accept, Authorization and If-None-Match are
allowed; Content-Range, Content-Length and ETag are exposed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

ORIGIN = "http://viewer.localhost:3000"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data: Path = tmp_path_factory.mktemp("cors") / "data"
    srv = Server(data, {"DICOMWEB_CORS_ORIGINS": f"{ORIGIN},http://other.localhost"})
    yield srv
    srv.stop()


def test_preflight_allows_viewer_headers(cors_server: Server) -> None:
    r = httpx.options(
        f"{cors_server.root}/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range, accept, authorization, if-none-match",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("range", "accept", "authorization", "if-none-match"):
        assert header in allowed


def test_simple_request_exposes_headers(cors_server: Server) -> None:
    r = httpx.get(f"{cors_server.root}/studies", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = r.headers["access-control-expose-headers"].lower()
    for header in ("content-range", "content-length", "etag"):
        assert header in exposed


def test_unknown_origin_gets_no_cors_grant(cors_server: Server) -> None:
    r = httpx.get(f"{cors_server.root}/studies", headers={"Origin": "http://evil.localhost"})
    assert "access-control-allow-origin" not in r.headers
