"""Response helpers shared by the services: errors, DICOM JSON with gzip, public base URL."""

from __future__ import annotations

import gzip

import orjson
from starlette.requests import Request
from starlette.responses import Response

from storage import BASE_PLACEHOLDER, Archive

DICOM_JSON = "application/dicom+json"
_PLACEHOLDER = BASE_PLACEHOLDER.encode()
GZIP_MIN_BYTES = 1024


class HTTPError(Exception):
    """Raised anywhere in a handler; becomes a DICOMweb error response with a readable reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def archive_of(request: Request) -> Archive:
    """The archive the application opened at start-up."""
    archive: Archive = request.app.state.archive
    return archive


def index_unreachable_response() -> Response:
    """503 with Retry-After: the index database cannot be reached (PostgreSQL down, a pool timeout)."""
    return error_response(503, "the index database cannot be reached; retry shortly")


def error_response(status: int, reason: str) -> Response:
    # The reason goes in the body and in a Warning header (PS3.18 8.1.4), which clients log.
    # Header values are Latin-1 on the wire: a reason quoting the client's non-ASCII input is escaped there.
    safe = reason.replace('"', "'").replace("\r", " ").replace("\n", " ")[:400]
    safe = safe.encode("ascii", "backslashreplace").decode("ascii")
    headers = {"Warning": f'299 dicomweb "{safe}"'}
    if status == 503:
        headers["Retry-After"] = "1"
    return Response(
        orjson.dumps({"status": status, "error": reason}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def base_url(request: Request) -> str:
    settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url + settings.root
    return f"{request.url.scheme}://{request.url.netloc}{settings.root}"


def with_base(request: Request, body: bytes) -> bytes:
    return body.replace(_PLACEHOLDER, base_url(request).encode())


def accepts_gzip(request: Request) -> bool:
    """True when Accept-Encoding lists gzip (or *) with a q-value above zero (RFC 9110 12.5.3)."""
    for item in request.headers.get("accept-encoding", "").lower().split(","):
        coding, _, params = item.partition(";")
        if coding.strip() not in ("gzip", "*"):
            continue
        q = params.strip()
        try:
            return not q.startswith("q=") or float(q[2:]) > 0
        except ValueError:
            return True
    return False


def dicom_json(
    request: Request, body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = with_base(request, body)
    headers = dict(headers or {})
    headers["Vary"] = "Accept-Encoding"
    if len(body) >= GZIP_MIN_BYTES and accepts_gzip(request):
        # Level 1: JSON metadata compresses ~10x even so, at a fraction of the CPU of level 6.
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def check_json_accept(request: Request) -> None:
    from dicomweb.negotiation import accept_ranges

    ranges = accept_ranges(request)
    if not ranges:
        return
    for r in ranges:
        if r.type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return
        if r.type == "multipart/related" and (r.param("type") or "").lower() == "application/dicom+json":
            return
    raise HTTPError(406, "this resource is available as application/dicom+json only")
