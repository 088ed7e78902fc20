"""Browser sites served beside the DICOMweb API, so no second web server is needed.

- ``/viewer-demo/``: the progressive stack viewer in ``viewer-demo/web`` (plain ES modules), with the
  OpenJPEG WebAssembly decoder from ``viewer-demo/node_modules`` under ``/viewer-demo/codec/``.
- ``/ohif/`` and ``/ohif-progressive/``: the prebuilt OHIF v3 viewer (``@ohif/app``'s ``dist/``, unpacked by
  ``scripts/setup-browser.sh``), each with an ``app-config.js`` generated here whose data source is this
  server. The progressive one asks for frames as HTJ2K (``image/jphc``, 1.2.840.10008.1.2.4.202), which OHIF
  decodes at lower resolutions while the bytes stream in.

OHIF's build assumes it lives at ``/``: its ``index.html`` names ``/app.bundle...js``, ``PUBLIC_URL`` is ``"/"``
and webpack's chunk path is the literal ``"/"``. Those few strings are rewritten at serve time (the dist stays
as npm shipped it), and client-side routes (``/ohif/viewer?StudyInstanceUIDs=...``) get ``index.html``.

Where the files are: ``DICOMWEB_VIEWER_DEMO_DIR`` (default: ``viewer-demo`` beside the ``dicomweb`` package,
else in the working directory) and ``DICOMWEB_OHIF_DIST`` (default: ``<viewer-demo>/.ohif/dist``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dicomweb.conditional import etag_for, not_modified
from storage.config import Settings

SETUP_HINT = "run scripts/setup-browser.sh (it installs the npm packages and unpacks OHIF)"
HTJ2K_ACCEPT = "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"
OHIF_SITES = {"/ohif": False, "/ohif-progressive": True}  # mount -> progressive
NO_CACHE = {"Cache-Control": "no-cache"}
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
# Content-hashed file names in OHIF's dist: 12.bundle.b4688cdbdd856b75.js, 0ddf166f7a343eda.wasm.
HASHED_NAME = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm|woff2)$")
# Paths that name a file; anything else under an OHIF mount is a client-side route and gets index.html.
ASSET_SUFFIXES = frozenset({
    ".js", ".mjs", ".css", ".map", ".wasm", ".json", ".jsonc", ".png", ".ico", ".svg", ".woff", ".woff2",
    ".xml", ".webapp", ".html", ".txt",
})
WEBPACK_PUBLIC_PATH = b'__webpack_require__.p = "/";'
# In a page, PUBLIC_URL (set by index.html); in a worker, the folder of the worker's own script.
DYNAMIC_PUBLIC_PATH = (
    b'__webpack_require__.p = (typeof window !== "undefined" && window.PUBLIC_URL)'
    b' || self.location.pathname.replace(/[^/]*$/, "");'
)

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def viewer_demo_dir() -> Path:
    if env := os.environ.get("DICOMWEB_VIEWER_DEMO_DIR"):
        return Path(env)
    beside = Path(__file__).resolve().parents[1] / "viewer-demo"
    return beside if beside.is_dir() else Path.cwd() / "viewer-demo"


def ohif_dist_dir(demo: Path) -> Path:
    return Path(os.environ.get("DICOMWEB_OHIF_DIST") or demo / ".ohif" / "dist")


# ---- files ------------------------------------------------------------------------------------------

def _cache_headers(name: str) -> dict[str, str]:
    return IMMUTABLE if HASHED_NAME.search(name) else NO_CACHE


def _inside(root: Path, rel: str) -> Path | None:
    """The file `rel` names under `root`, or None (missing, a folder, or outside root)."""
    try:
        path = (root / rel).resolve()
        path.relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return path if path.is_file() else None


@dataclass(frozen=True)
class _Body:
    data: bytes
    etag: str

    @classmethod
    def of(cls, data: bytes) -> _Body:
        return cls(data, etag_for(hashlib.sha1(data).hexdigest()))


def _bytes_response(request: Request, body: _Body, media_type: str, headers: dict[str, str]) -> Response:
    if not_modified(request, body.etag):
        return Response(status_code=304, headers={"ETag": body.etag, **headers})
    return Response(body.data, media_type=media_type, headers={"ETag": body.etag, **headers})


def _file_response(request: Request, path: Path, headers: dict[str, str]) -> Response:
    st = path.stat()
    etag = etag_for(str(path), st.st_mtime_ns, st.st_size)
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag, **headers})
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, stat_result=st, headers={"ETag": etag, **headers})


def _add_slash(prefix: str) -> Route:
    """`/viewer-demo` -> `/viewer-demo/`, keeping the query (`?study=...`)."""
    async def redirect(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(prefix + ("?" + query if query else ""), 308)
    return Route(prefix.rstrip("/"), redirect, methods=["GET", "HEAD"])


def _missing(what: str, path: Path) -> Response:
    body = (f"<!doctype html><title>{what} is not installed</title><h1>{what} is not installed</h1>"
            f"<p>{path} is missing: {SETUP_HINT}.</p>")
    return HTMLResponse(body, status_code=503, headers=NO_CACHE)


def _module_config(settings: Settings) -> _Body:
    cfg = {"root": settings.root, "publicUrl": settings.public_url}
    return _Body.of(f"export default {json.dumps(cfg)};\n".encode())


# ---- viewer-demo -------------------------------------------------------------------------------------

def viewer_demo_routes(settings: Settings, demo: Path) -> list[BaseRoute]:
    web = demo / "web"
    codec = demo / "node_modules" / "@cornerstonejs" / "codec-openjpeg" / "dist"
    config = _module_config(settings)

    async def page(request: Request) -> Response:
        rel = request.path_params["path"] or "index.html"
        if rel == "config.js":
            return _bytes_response(request, config, "text/javascript", NO_CACHE)
        path = _inside(web, rel)
        return _file_response(request, path, NO_CACHE) if path else Response("not found", 404)

    async def decoder(request: Request) -> Response:
        path = _inside(codec, request.path_params["path"])
        if path is None:
            return Response(f"the JPEG 2000 decoder is not installed: {SETUP_HINT}", 404)
        return _file_response(request, path, {"Cache-Control": "public, max-age=86400"})

    return [
        _add_slash("/viewer-demo/"),
        Route("/viewer-demo/codec/{path:path}", decoder, methods=["GET", "HEAD"]),
        Route("/viewer-demo/{path:path}", page, methods=["GET", "HEAD"]),
    ]


# ---- OHIF --------------------------------------------------------------------------------------------

def ohif_app_config(settings: Settings, mount: str, progressive: bool) -> _Body:
    """OHIF's window.config: one DICOMweb data source, this server (same origin unless public_url is set)."""
    source = {
        "friendlyName": "dicomweb-progressive" + (" (HTJ2K, progressive)" if progressive else ""),
        "name": "dicomweb",
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "supportsReject": False,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    if progressive:
        source["acceptHeader"] = [HTJ2K_ACCEPT]
    config = {
        "name": "dicomweb-progressive" + mount,
        "routerBasename": mount,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "dicomweb",
            "configuration": source,
        }],
    }
    root = json.dumps(settings.public_url + settings.root)
    public = "true" if settings.public_url else "false"
    script = (
        f"/* Generated by dicomweb/static_sites.py for {mount}/ (OHIF's own dist/app-config.js is not used). */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        f"(function () {{\n"
        f"  var root = {public} ? {root} : window.location.origin + {root};\n"
        f"  var c = window.config.dataSources[0].configuration;\n"
        f"  c.qidoRoot = c.wadoRoot = c.wadoUriRoot = root;\n"
        f"}})();\n"
    ).encode()
    return _Body.of(script)


class _Rewrites:
    """OHIF dist files with root-relative paths made mount-relative, cached per file version."""

    def __init__(self) -> None:
        self.cache: dict[tuple[Path, str], tuple[tuple[int, int], _Body | None]] = {}

    def get(self, path: Path, mount: str, fix: Callable[[bytes], bytes | None]) -> _Body | None:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self.cache.get((path, mount))
        if cached is None or cached[0] != stamp:
            fixed = fix(path.read_bytes())
            cached = stamp, None if fixed is None else _Body.of(fixed)
            self.cache[(path, mount)] = cached
        return cached[1]


def _fix_index(prefix: str) -> Callable[[bytes], bytes]:
    def fix(html: bytes) -> bytes:
        html = html.replace(b'window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{prefix}"'.encode())
        return re.sub(rb'(href|src|content)="/(?=[^/"])', lambda m: m[1] + b'="' + prefix.encode(), html)
    return fix


def _fix_asset(body: bytes) -> bytes | None:
    """Webpack's hard-coded chunk path, and root-relative font URLs in CSS; None when nothing to change."""
    fixed = body.replace(WEBPACK_PUBLIC_PATH, DYNAMIC_PUBLIC_PATH).replace(b"url(/", b"url(")
    return None if fixed == body else fixed


def _ohif_site(settings: Settings, dist: Path, rewrites: _Rewrites, mount: str, progressive: bool) -> list[BaseRoute]:
    prefix = mount + "/"
    app_config = ohif_app_config(settings, mount, progressive)
    fix_index = _fix_index(prefix)

    async def site(request: Request) -> Response:
        if not (dist / "index.html").is_file():
            return _missing("OHIF", dist)
        rel = request.path_params["path"]
        if rel == "app-config.js":
            return _bytes_response(request, app_config, "text/javascript", NO_CACHE)
        path = _inside(dist, rel) if rel else None
        if path is None and Path(rel).suffix.lower() in ASSET_SUFFIXES:
            return Response("not found", 404)
        if path is None or path.name == "index.html":  # a client-side route
            html = rewrites.get(dist / "index.html", prefix, fix_index)
            assert html is not None
            return _bytes_response(request, html, "text/html; charset=utf-8", NO_CACHE)
        if path.parent == dist.resolve() and path.suffix in (".js", ".css"):
            body = await asyncio.to_thread(rewrites.get, path, "", _fix_asset)
            if body is not None:
                media_type = mimetypes.guess_type(path.name)[0] or "text/plain"
                return _bytes_response(request, body, media_type, _cache_headers(path.name))
        return _file_response(request, path, _cache_headers(path.name))

    return [
        _add_slash(prefix),
        Route(prefix + "{path:path}", site, methods=["GET", "HEAD"]),
    ]


def ohif_routes(settings: Settings, dist: Path) -> list[BaseRoute]:
    rewrites = _Rewrites()
    return [route for mount, progressive in OHIF_SITES.items()
            for route in _ohif_site(settings, dist, rewrites, mount, progressive)]


def static_routes(settings: Settings) -> list[BaseRoute]:
    """Routes for /viewer-demo/ and the OHIF mounts; add them after the DICOMweb mount."""
    demo = viewer_demo_dir()
    return viewer_demo_routes(settings, demo) + ohif_routes(settings, ohif_dist_dir(demo))
