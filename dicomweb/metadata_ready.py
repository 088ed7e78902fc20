"""A series' `/metadata` from its ready compressed body (storage/metadata_cache.py), for clients that accept
gzip (all viewers do): the request costs a version check in the index and a send."""

from __future__ import annotations

import gzip

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.responses import DICOM_JSON, base_url, with_base
from storage.metadata_cache import bodies


async def ready_series_metadata(request: Request, study: str, series: str) -> Response | None:
    """The gzip-compressed DICOM JSON of the series, or None when it has no instance."""
    index = request.app.state.archive.index

    async def build() -> bytes | None:
        rows = await index.metadata(study, series)
        if not rows:
            return None
        # Level 6 (not the per-request level 1): it is compressed once per version of the series.
        return gzip.compress(with_base(request, b"[" + b",".join(rows) + b"]"), compresslevel=6, mtime=0)

    # Bodies hold absolute BulkDataURIs: one per public base URL (and per index, if a process had several).
    variant = f"{index.url}|{base_url(request)}"
    body = await bodies.get(index.engine, study, series, variant, build)
    if body is None:
        return None
    headers = {"Vary": "Accept-Encoding", "Content-Encoding": "gzip"}
    return Response(body, media_type=DICOM_JSON, headers=headers)
