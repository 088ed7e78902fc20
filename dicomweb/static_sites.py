"""Browser sites served beside the DICOMweb API, so no second web server is needed.

- ``/``: a landing page that links to the DICOMweb root and the viewers, and says what is not installed.
- ``/admin/``: storage economics for administrators (``dicomweb/admin_web``, plain HTML, an ES module and
  CSS shipped in the package; its figures come from the admin-scope API, GET {root}/stats and /lifecycle).
- ``/viewer-demo/``: the progressive stack viewer in ``viewer-demo/web`` (plain ES modules), with the
  OpenJPEG WebAssembly decoder (npm ``@cornerstonejs/codec-openjpeg``) under ``/viewer-demo/codec/``.
- ``/ohif/``, ``/ohif-single/`` and ``/ohif-progressive/``: the prebuilt OHIF v3 viewer (``@ohif/app``'s
  ``dist/``, unpacked by ``scripts/setup-browser.sh``), each with an ``app-config.js`` generated here whose
  data source is this server. ``/ohif/`` loads every slice in two retrieve stages, a quality-layer cut of the
  master (``layers=preview``) first and the lossless master second (see OHIF_STAGES); ``/ohif-single/`` loads
  each frame once, as stored; ``/ohif-progressive/`` asks for frames as HTJ2K (``image/jphc``,
  1.2.840.10008.1.2.4.202), which OHIF decodes at lower resolutions while the bytes stream in.

OHIF's build assumes it lives at ``/``: its ``index.html`` names ``/app.bundle...js``, ``PUBLIC_URL`` is
``"/"`` and webpack's chunk path is the literal ``"/"``. Those few strings are rewritten at serve time (the
dist stays as npm shipped it), and client-side routes (``/ohif/viewer?StudyInstanceUIDs=...``) get
``index.html``.

Where the files are (never the working directory, so the server can be started anywhere):

- the demo's pages: shipped in the package (``dicomweb/viewer_web``, mapped from ``viewer-demo/web`` by
  pyproject.toml), or ``viewer-demo/web`` of a source checkout;
- the npm assets (the decoder and OHIF's dist) in a folder laid out like ``viewer-demo/`` (``node_modules/``,
  ``.ohif/dist``): ``DICOMWEB_VIEWER_DEMO_DIR`` when set (then only there); else the first that holds them of
  the per-user folder ``${XDG_DATA_HOME:-~/.local/share}/dicomweb/viewer-demo``, where
  ``scripts/setup-browser.sh`` installs them by default, and a source checkout's ``viewer-demo/``.
  ``DICOMWEB_OHIF_DIST``, when set, is OHIF's dist itself.
While something is missing it is looked for again on each request, so installing it needs no restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import mimetypes
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dicomweb.conditional import etag_for, not_modified
from storage import Settings, ohif_dist_override, user_data_home, viewer_demo_dir_override

# What scripts/setup-browser.sh installs (its OHIF_VERSION, and viewer-demo/package-lock.json); the hints on
# the "not installed" pages name them, and tests/browser/test_static_sites.py keeps them in step.
OHIF_VERSION = "3.13.2"
CODEC_PACKAGE, CODEC_VERSION = "@cornerstonejs/codec-openjpeg", "1.3.6"
PACKAGE_WEB = Path(__file__).resolve().parent / "viewer_web"
ADMIN_WEB = Path(__file__).resolve().parent / "admin_web"
CHECKOUT_DEMO = Path(__file__).resolve().parents[1] / "viewer-demo"
CODEC_SUBDIR = "node_modules/@cornerstonejs/codec-openjpeg/dist"
OHIF_SUBDIR = ".ohif/dist"
# /ohif-progressive/ prefers HTJ2K (.202), which OHIF streams and decodes at a lower resolution first. Only
# layered masters can be sent that way, so the second entry (OHIF's own default, a lower q) takes every other
# instance as stored: lossy originals (JPEG baseline ultrasound) and instances whose master is still being
# made. OHIF joins the list with commas into one Accept header (core/utils/generateAcceptHeader.ts returns a
# configured list as is; XHR and fetch turn the array into "a,b"), and the server takes the first range it can
# serve, highest q first (dicomweb/accept.py, dicomweb/frames.py).
HTJ2K_ACCEPT = [
    "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202",
    "multipart/related; type=application/octet-stream; transfer-syntax=*; q=0.5",
]
# Mount -> how it loads frames: "stages" (quality-layer cut, then lossless), "single" (once, as stored),
# "htj2k" (HTJ2K, streamed).
OHIF_SITES = {"/ohif": "stages", "/ohif-single": "single", "/ohif-progressive": "htj2k"}
# /ohif/'s stack retrieve stages (Cornerstone3D's progressive loading, read from OHIF 3.13's bundle):
# - The cornerstone extension's onModeEnter clears the retrieve configurations and registers, for stacks,
#   the data source's `stackRetrieveOptions` merged over its default ({single: {streaming, decodeLevel: 1}});
#   a plain object is merged shallowly, so these `retrieveOptions` and `stages` replace the default's.
# - Each slice runs the stages in order; a response is marked with its stage's imageQualityStatus, and the
#   next stage is queued only while that is not FULL_RESOLUTION (8): the cut is LOSSY (7), the master final.
# - OHIF's stack prefetcher loads the other slices with retrieveOptions.default, else the first entry: so no
#   stage is named "default" and the lossy one comes first, and a whole series is prefetched as cheap cuts;
#   each slice becomes lossless when it is shown.
# - decodeLevel 0: without it a response that is not FULL_RESOLUTION is decoded at a lower resolution
#   (decodeLevelFromComplete gives 3, 1/8 size, when no percentage is known); streaming false: Part-1 JPEG
#   2000 is decoded only when complete anyway.
# - Only `layers` in the URL: a resolution cut (fsiz) has fewer rows than the metadata says. `preview` lets
#   the server pick the count per instance from its fidelity ladder (storage/preview.py); an instance
#   without a master answers it with its frame as stored.
LOSSY_STAGE = {
    "urlArguments": "layers=preview",
    "imageQualityStatus": 7,
    "decodeLevel": 0,
    "streaming": False,
}
FINAL_STAGE = {"streaming": False}
OHIF_STAGES = {
    "retrieveOptions": {"lossyPreview": LOSSY_STAGE, "finalLossless": FINAL_STAGE},
    "stages": [
        {"id": "lossyPreview", "retrieveType": "lossyPreview"},
        {"id": "finalLossless", "retrieveType": "finalLossless"},
    ],
}
NO_CACHE = {"Cache-Control": "no-cache"}
# For the few HTML pages made here (the landing page, "not installed").
PAGE_STYLE = (
    "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}"
    "pre{background:#eee;padding:.5rem;overflow-x:auto}</style>"
)
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
# Content-hashed file names in OHIF's dist: 12.bundle.b4688cdbdd856b75.js, 0ddf166f7a343eda.wasm.
HASHED_NAME = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm|woff2)$")
# Paths that name a file; anything else under an OHIF mount is a client-side route and gets index.html.
ASSET_SUFFIXES = frozenset(
    {
        ".js",
        ".mjs",
        ".css",
        ".map",
        ".wasm",
        ".json",
        ".jsonc",
        ".png",
        ".ico",
        ".svg",
        ".woff",
        ".woff2",
        ".xml",
        ".webapp",
        ".html",
        ".txt",
    }
)
WEBPACK_PUBLIC_PATH = b'__webpack_require__.p = "/";'
# In a page, PUBLIC_URL (set by index.html); in a worker, the folder of the worker's own script.
DYNAMIC_PUBLIC_PATH = (
    b'__webpack_require__.p = (typeof window !== "undefined" && window.PUBLIC_URL)'
    b' || self.location.pathname.replace(/[^/]*$/, "");'
)

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def user_assets_dir() -> Path | None:
    """``${XDG_DATA_HOME:-~/.local/share}/dicomweb/viewer-demo``: where scripts/setup-browser.sh installs the
    decoder and OHIF by default, so a server installed with pip finds them (None without a home folder)."""
    base = user_data_home()
    return base / "dicomweb" / "viewer-demo" if base else None


def asset_dirs() -> list[Path]:
    """Folders laid out like viewer-demo/ (node_modules/, .ohif/dist) where the npm assets are looked for:
    DICOMWEB_VIEWER_DEMO_DIR alone when it is set; else the per-user folder the setup script installs into,
    then a source checkout's viewer-demo/ (where earlier versions of the script installed them)."""
    if override := viewer_demo_dir_override():
        return [override]
    user = user_assets_dir()
    checkout = CHECKOUT_DEMO if (CHECKOUT_DEMO / "package.json").is_file() else None  # not when pip-installed
    return [d for d in (user, checkout) if d is not None]


@dataclass
class Located:
    """The first of `candidates` that holds `marker`. While none does, each call looks again, so files
    installed while the server runs are found without a restart; `candidates[0]` is where to install."""

    what: str
    marker: str
    candidates: list[Path]
    _found: Path | None = field(default=None, repr=False)

    def get(self) -> Path | None:
        if self._found is None or not (self._found / self.marker).is_file():
            self._found = next((c for c in self.candidates if (c / self.marker).is_file()), None)
        return self._found


def web_files() -> Located:
    # The pages are part of the package; DICOMWEB_VIEWER_DEMO_DIR/web, when there, is a copy being worked on.
    override = viewer_demo_dir_override()
    packaged = PACKAGE_WEB if PACKAGE_WEB.is_dir() else CHECKOUT_DEMO / "web"
    return Located(
        "the viewer demo's pages", "index.html", ([override / "web"] if override else []) + [packaged]
    )


def codec_files() -> Located:
    return Located(
        "the JPEG 2000 decoder", "openjpegwasm_decode.js", [d / CODEC_SUBDIR for d in asset_dirs()]
    )


def ohif_files() -> Located:
    override = ohif_dist_override()
    return Located("OHIF", "index.html", [override] if override else [d / OHIF_SUBDIR for d in asset_dirs()])


def install_commands(located: Located) -> list[str]:
    """Shell commands that put the missing npm assets where this server looks first (Node.js's npm needed)."""
    if not located.candidates:  # no home folder, no checkout, no variable: nowhere to look
        return [
            "export DICOMWEB_VIEWER_DEMO_DIR=/some/folder  # then restart the server and reload this page"
        ]
    target = located.candidates[0]
    if located.marker == "openjpegwasm_decode.js":
        prefix = shlex.quote(str(target.parents[len(Path(CODEC_SUBDIR).parts) - 1]))  # it holds node_modules/
        return [f"npm install --prefix {prefix} --no-save --no-package-lock {CODEC_PACKAGE}@{CODEC_VERSION}"]
    dist, tgz = shlex.quote(str(target)), f"ohif-app-{OHIF_VERSION}.tgz"
    return [
        f"mkdir -p {dist} && cd {dist}",
        f"npm pack @ohif/app@{OHIF_VERSION}",
        f"tar -xzf {tgz} --strip-components=2 --wildcards 'package/dist/*' --exclude='*.map' && rm {tgz}",
    ]


def setup_hint(located: Located) -> str:
    """Plain text: where the files were looked for, and what installs them."""
    return (
        f"{located.what} is not installed; looked in: {', '.join(map(str, located.candidates))}. "
        f"To install it: {' ; '.join(install_commands(located))} "
        "(from a source checkout, scripts/setup-browser.sh --viewers-only installs the decoder and OHIF)."
    )


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


def _missing_page(located: Located) -> str:
    places = "".join(f"<li><code>{html.escape(str(c))}</code></li>" for c in located.candidates)
    commands = html.escape("\n".join(install_commands(located)))
    return (
        f"<p>{located.what[0].upper() + located.what[1:]} is not installed: this server looked in</p>"
        f"<ul>{places}</ul><p>These commands install it where this server looks first (they need Node.js's "
        f"<code>npm</code>); then reload, no restart needed:</p><pre>{commands}</pre>"
        "<p>From a source checkout, <code>scripts/setup-browser.sh --viewers-only</code> installs the "
        "viewer demo's decoder and OHIF there.</p>"
    )


def _missing(located: Located) -> Response:
    title = f"{located.what} is not installed"
    body = (
        f"<!doctype html><meta charset=utf-8><title>{title}</title>{PAGE_STYLE}<h1>{title}</h1>"
        f"{_missing_page(located)}"
    )
    return HTMLResponse(body, status_code=503, headers=NO_CACHE)


def _module_config(settings: Settings) -> _Body:
    cfg = {"root": settings.root, "publicUrl": settings.public_url}
    return _Body.of(f"export default {json.dumps(cfg)};\n".encode())


# ---- viewer-demo -------------------------------------------------------------------------------------


def viewer_demo_routes(settings: Settings, web: Located, codec: Located) -> list[BaseRoute]:
    config = _module_config(settings)

    async def page(request: Request) -> Response:
        rel = request.path_params["path"] or "index.html"
        if rel == "config.js":
            return _bytes_response(request, config, "text/javascript", NO_CACHE)
        root = web.get()
        if root is None:  # a package built without its data files
            return Response(
                f"not installed: {web.what}, looked in {', '.join(map(str, web.candidates))}", 404
            )
        path = _inside(root, rel)
        return _file_response(request, path, NO_CACHE) if path else Response("not found", 404)

    async def decoder(request: Request) -> Response:
        root = codec.get()
        if root is None:
            # The page then decodes nothing itself: the server renders previews and sends uncompressed frames.
            return Response(setup_hint(codec), 404)
        path = _inside(root, request.path_params["path"])
        if path is None:
            return Response("not found", 404)
        return _file_response(request, path, {"Cache-Control": "public, max-age=86400"})

    return [
        _add_slash("/viewer-demo/"),
        Route("/viewer-demo/codec/{path:path}", decoder, methods=["GET", "HEAD"]),
        Route("/viewer-demo/{path:path}", page, methods=["GET", "HEAD"]),
    ]


# ---- /admin/ -----------------------------------------------------------------------------------------


def admin_routes(settings: Settings) -> list[BaseRoute]:
    """The storage economics page. The page itself is public (it holds no data); what it fetches needs the
    admin scope, and it asks for a token when the server answers 401."""
    config = _module_config(settings)

    async def page(request: Request) -> Response:
        rel = request.path_params["path"] or "index.html"
        if rel == "config.js":
            return _bytes_response(request, config, "text/javascript", NO_CACHE)
        path = _inside(ADMIN_WEB, rel)
        return _file_response(request, path, NO_CACHE) if path else Response("not found", 404)

    return [_add_slash("/admin/"), Route("/admin/{path:path}", page, methods=["GET", "HEAD"])]


# ---- OHIF --------------------------------------------------------------------------------------------

# Volume viewports (MPR), read from OHIF 3.13.2's bundle:
# - The cornerstone extension's onModeEnter registers Cornerstone3D's interleaved volume stages under 'volume'
#   with no retrieveOptions, and reads nothing from the data source for them.
# - Worse, OHIF's MPR hanging protocols name an imageLoadStrategy (interleaveCenter), and OHIF runs those
#   strategies with the retrieve configuration cleared (createMetadataWrappedStrategy clears it around the
#   call), so volumes load one request per slice, whatever is registered. Without a registered strategy,
#   CornerstoneViewportService calls volume.load(), which runs the registered stages.
# - OHIF takes extension objects in window.config.extensions as they are (loadModule returns a non-string as
#   is) and calls every extension's onModeEnter in registration order, the configured ones after its own.
# So this extension, defined in app-config.js (no rebuild), drops the image load strategies and registers the
# interleaved stages again with retrieve options: the stages whose retrieveType is 'default' (the first
# images: middle, first, last) and 'multipleFast' (half the slices) ask for the cut, marked LOSSY;
# 'multipleFinal' (every slice) for the master. A slice whose cut came first is queued again for its final
# stage, as in a stack; the slices in between show their neighbours' replicas until theirs arrive.
OHIF_VOLUME_RETRIEVE_OPTIONS = {
    "default": LOSSY_STAGE,
    "multipleFast": LOSSY_STAGE,
    "multipleFinal": FINAL_STAGE,
}
VOLUME_STAGES_EXTENSION = b"""window.config.extensions.push({
  id: "dicomweb-progressive.volume-stages",
  onModeEnter: function (ctx) {
    var cs = window.cornerstone;  /* set by OHIF's cornerstone extension, whose onModeEnter ran before */
    var protocols = ctx.servicesManager.services.hangingProtocolService;
    if (!cs || !cs.ProgressiveRetrieveImages || !protocols) return;
    protocols.registeredImageLoadStrategies = {};  /* volumes then load with volume.load(): the stages */
    cs.utilities.imageRetrieveMetadataProvider.add("volume", {
      stages: cs.ProgressiveRetrieveImages.interleavedRetrieveStages.stages,
      retrieveOptions: %s,
    });
  },
});
"""
FRIENDLY_NAMES = {"stages": "", "single": " (one stage)", "htj2k": " (HTJ2K, progressive)"}


def ohif_app_config(settings: Settings, mount: str, kind: str) -> _Body:
    """OHIF's window.config: one DICOMweb data source, this server (same origin unless public_url is set)."""
    source: dict[str, object] = {
        "friendlyName": "dicomweb-progressive" + FRIENDLY_NAMES[kind],
        "name": "dicomweb",
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        # The server's rendered /thumbnail (a small JPEG, fetched with the Authorization header); 'wadors'
        # would fetch and decode a whole lossless frame per series first.
        "thumbnailRendering": "thumbnail",
        "thumbnailRequestStrategy": "fetch",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "supportsReject": False,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    if kind == "htj2k":
        source["acceptHeader"] = HTJ2K_ACCEPT
    elif kind == "stages":
        source["stackRetrieveOptions"] = OHIF_STAGES
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
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": source,
            }
        ],
    }
    if settings.oidc_issuer and settings.ohif_oidc_client_id:
        # OHIF's own sign-in (oidc-client-ts, authorization code with PKCE); relative URIs are resolved
        # under the mount (/ohif/callback). Register them with the issuer for this client.
        config["oidc"] = [
            {
                "authority": settings.oidc_issuer,
                "client_id": settings.ohif_oidc_client_id,
                "redirect_uri": "/callback",
                "response_type": "code",
                "scope": f"openid {settings.scope_read}",
                "post_logout_redirect_uri": "/",
            }
        ]
    root = json.dumps(settings.public_url + settings.root)
    public = "true" if settings.public_url else "false"
    script = (
        f"/* Generated by dicomweb/static_sites.py for {mount}/ "
        "(OHIF's own dist/app-config.js is not used). */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        f"(function () {{\n"
        f"  var root = {public} ? {root} : window.location.origin + {root};\n"
        f"  var c = window.config.dataSources[0].configuration;\n"
        f"  c.qidoRoot = c.wadoRoot = c.wadoUriRoot = root;\n"
        f"}})();\n"
    ).encode()
    if kind == "stages":
        script += VOLUME_STAGES_EXTENSION % json.dumps(OHIF_VOLUME_RETRIEVE_OPTIONS).encode()
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


def _ohif_site(
    settings: Settings, ohif: Located, rewrites: _Rewrites, mount: str, kind: str
) -> list[BaseRoute]:
    prefix = mount + "/"
    app_config = ohif_app_config(settings, mount, kind)
    fix_index = _fix_index(prefix)

    async def site(request: Request) -> Response:
        dist = ohif.get()
        if dist is None:
            return _missing(ohif)
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


def ohif_routes(settings: Settings, ohif: Located) -> list[BaseRoute]:
    rewrites = _Rewrites()
    return [
        route
        for mount, kind in OHIF_SITES.items()
        for route in _ohif_site(settings, ohif, rewrites, mount, kind)
    ]


# ---- the landing page --------------------------------------------------------------------------------


def site_notes() -> tuple[str, str]:
    """What the start-up banner adds to the viewer demo's and OHIF's URLs: empty when installed."""
    codec = "" if codec_files().get() else " (npm decoder not installed: the server decodes)"
    ohif = "" if ohif_files().get() else " (not installed: open it to see how)"
    return codec, ohif


def landing_route(settings: Settings, codec: Located, ohif: Located) -> Route:
    """`GET /`: what this server offers, with links, instead of a bare 404."""

    async def landing(request: Request) -> Response:
        root = html.escape(settings.root)
        status = "" if codec.get() else " (the page's JPEG 2000 decoder is not installed: the server decodes)"
        if ohif.get():
            ohif_item = (
                '<li><a href="ohif/">OHIF v3</a>: each slice as a quality-layer preview, then lossless; '
                '<a href="ohif-single/">OHIF, one stage</a>: frames as stored (layered lossless JPEG 2000); '
                '<a href="ohif-progressive/">OHIF, progressive</a>: HTJ2K, decoded while it streams in</li>'
            )
        else:
            ohif_item = f"<li>OHIF v3 (<code>/ohif/</code>) is not installed.{_missing_page(ohif)}</li>"
        body = (
            "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>dicomweb-progressive</title>{PAGE_STYLE}<h1>dicomweb-progressive</h1>"
            f"<p>A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS). DICOMweb root: <code>{root}</code>, e.g. "
            f'<a href="{root.lstrip("/")}/studies">{root}/studies</a>; '
            'health: <a href="healthz">/healthz</a>.</p>'
            f'<ul><li><a href="viewer-demo/">Viewer demo</a>: progressive stack viewer{status}</li>'
            f"{ohif_item}"
            '<li><a href="admin/">Storage economics</a>: stored against received, costs, lifecycle '
            "savings (admin scope)</li></ul>"
        )
        return HTMLResponse(body, headers=NO_CACHE)

    return Route("/", landing, methods=["GET", "HEAD"])


def static_routes(settings: Settings) -> list[BaseRoute]:
    """Routes for `/`, /viewer-demo/, /admin/ and the OHIF mounts; add them after the DICOMweb mount."""
    codec, ohif = codec_files(), ohif_files()
    return [
        landing_route(settings, codec, ohif),
        *viewer_demo_routes(settings, web_files(), codec),
        *admin_routes(settings),
        *ohif_routes(settings, ohif),
    ]
