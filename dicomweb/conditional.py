"""ETags, If-None-Match and byte ranges for single-part bodies (RFC 9110 8.8.3, 13.1.2, 14)."""

from __future__ import annotations

import hashlib
import re

from starlette.requests import Request
from starlette.responses import Response

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def etag_for(*parts: object) -> str:
    return '"' + hashlib.sha1("|".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest() + '"'


def not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def _byte_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(first, last) of a single satisfiable range; None to ignore the header; False if unsatisfiable."""
    m = _RANGE.match(header)
    if not m:
        return None  # several ranges or another unit: send the whole body (allowed by RFC 9110)
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else False
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return False
    return start, end


def body_response(
    request: Request, body: bytes, media_type: str, etag: str, headers: dict[str, str] | None = None
) -> Response:
    """A single-part body with ETag, 304 for a matching If-None-Match, and 206/416 for Range."""
    headers = {
        **(headers or {}),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
    }
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", etag) == etag:
        picked = _byte_range(range_header, len(body))
        if picked is False:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(body)}"})
        if isinstance(picked, tuple):
            first, last = picked
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            return Response(body[first : last + 1], status_code=206, media_type=media_type, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
