"""WADO-RS: instances, metadata, frames and bulk data (PS3.18 10.4)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.conditional import body_response, etag_for, not_modified
from dicomweb.multipart import (
    closing,
    encode_multipart,
    make_boundary,
    multipart_content_type,
    multipart_length,
    part_header,
)
from dicomweb.negotiation import Choice, accept_ranges, choices
from dicomweb.params import uids
from dicomweb.responses import (
    DICOM_JSON,
    HTTPError,
    accepts_gzip,
    archive_of,
    base_url,
    check_json_accept,
    dicom_json,
)
from storage import EXPLICIT_LE, IMPLICIT_LE, OCTET_STREAM, Archive, CannotProduce, InstanceRecord, syntax

DICOM = "application/dicom"
EAGER_DECODE_BYTES = 512 << 20


def _boundary(request: Request) -> str:
    # Same request, same bytes: the boundary depends on the URL and what was accepted.
    return make_boundary(f"{request.url.path}?{request.url.query}|{request.headers.get('accept', '')}")


async def instance_records(request: Request) -> list[InstanceRecord]:
    return await archive_of(request).instances(*uids(request))


# ---- instances ------------------------------------------------------------------------------------


def _instance_syntax(choice: Choice, rec: InstanceRecord) -> str | None:
    """Transfer syntax to send `rec` in for this choice, or None if it cannot be produced."""
    ts = choice.transfer_syntax or EXPLICIT_LE
    if ts == "*" or ts == rec.transfer_syntax:
        return rec.transfer_syntax
    if ts in (EXPLICIT_LE, IMPLICIT_LE) and syntax(rec.transfer_syntax).decodable:
        return ts
    return None


async def retrieve(request: Request) -> Response:
    recs = await instance_records(request)
    single_ok = {DICOM} if "sop" in request.path_params else set()
    archive = archive_of(request)
    for choice in choices(accept_ranges(request), DICOM, single_ok):
        if choice.media_type not in (DICOM, "*/*", "*"):
            continue
        syntaxes = [_instance_syntax(choice, rec) for rec in recs]
        plan = [(rec, ts) for rec, ts in zip(recs, syntaxes, strict=True) if ts is not None]
        if len(plan) < len(recs):
            continue
        return await _instances_response(request, archive, plan, choice.multipart)
    stored = sorted({r.transfer_syntax for r in recs})
    raise HTTPError(
        406,
        f"cannot produce an acceptable representation; stored as {', '.join(stored)}, "
        f"and {EXPLICIT_LE} or transfer-syntax=* can always be asked for",
    )


async def _instances_response(
    request: Request, archive: Archive, plan: list[tuple[InstanceRecord, str]], multipart: bool
) -> Response:
    # Decode before answering, so an instance the decoders cannot handle is left out (206, with a
    # Warning) or refused (406) instead of cutting the response off mid-stream. Beyond a memory
    # budget the rest is decoded while streaming.
    ready: dict[str, bytes] = {}
    undecodable: dict[str, str] = {}
    budget = EAGER_DECODE_BYTES
    for rec, ts in plan:
        if ts == rec.transfer_syntax or budget <= 0:
            continue
        try:
            ready[rec.sop_uid] = await archive.transcoded(rec, ts)
            budget -= len(ready[rec.sop_uid])
        except CannotProduce as exc:
            undecodable[rec.sop_uid] = str(exc)
    status, extra_headers = 200, {}
    if undecodable:
        plan = [(rec, ts) for rec, ts in plan if rec.sop_uid not in undecodable]
        if not plan:
            reason = next(iter(undecodable.values()))
            raise HTTPError(406, f"{reason}; transfer-syntax=* gives the stored data")
        status = 206
        extra_headers["Warning"] = f'299 dicomweb "{len(undecodable)} instance(s) left out: cannot decode"'

    async def body_of(rec: InstanceRecord, ts: str) -> AsyncIterator[bytes]:
        if ts == rec.transfer_syntax:
            async for chunk in archive.stored_bytes(rec):
                yield chunk
        elif rec.sop_uid in ready:
            yield ready.pop(rec.sop_uid)
        else:
            yield await archive.transcoded(rec, ts)

    if not multipart:
        rec, ts = plan[0]
        headers = {"Content-Length": str(rec.size)} if ts == rec.transfer_syntax else {}
        return StreamingResponse(
            body_of(rec, ts), media_type=f"{DICOM}; transfer-syntax={ts}", headers=headers
        )

    boundary = _boundary(request)
    parts = [(f"{DICOM}; transfer-syntax={ts}", rec, ts) for rec, ts in plan]

    async def stream() -> AsyncIterator[bytes]:
        for ctype, rec, ts in parts:
            yield part_header(boundary, ctype)
            async for chunk in body_of(rec, ts):
                yield chunk
            yield b"\r\n"
        yield closing(boundary)

    headers = dict(extra_headers)
    if all(ts == rec.transfer_syntax for _, rec, ts in parts):
        headers["Content-Length"] = str(multipart_length(boundary, [(c, r.size) for c, r, _ in parts]))
    uniform = {ts for _, _, ts in parts}
    ctype = multipart_content_type(boundary, DICOM, uniform.pop() if len(uniform) == 1 else None)
    return StreamingResponse(stream(), status_code=status, headers=headers, media_type=ctype)


# ---- metadata -------------------------------------------------------------------------------------


async def metadata(request: Request) -> Response:
    check_json_accept(request)
    study, series, sop = uids(request)
    archive = archive_of(request)
    if series is not None and sop is None and accepts_gzip(request):
        # A series, to a client that takes gzip (every viewer): its compressed body, kept ready.
        body = await archive.compressed_series_metadata(study, series, base_url(request))
        return Response(
            body, media_type=DICOM_JSON, headers={"Vary": "Accept-Encoding", "Content-Encoding": "gzip"}
        )
    rows = await archive.metadata(study, series, sop)
    return dicom_json(request, b"[" + b",".join(rows) + b"]")


# ---- bulk data ------------------------------------------------------------------------------------

# Pixel Data is sent decoded (or as stored, when asked) frame by frame; every other value, float and
# double float pixel data included, as its bytes (storage.dicom_json.bulk_value).
PIXEL_PATH = "7FE00010"


async def bulkdata(request: Request) -> Response:
    recs = await instance_records(request)
    rec = recs[0]
    archive = archive_of(request)
    tag_path = request.path_params["tagpath"].upper()
    ranges = choices(accept_ranges(request), OCTET_STREAM, {OCTET_STREAM})
    choice = ranges[0] if ranges else Choice(OCTET_STREAM, None, True)
    if tag_path == PIXEL_PATH:
        if rec.number_of_frames == 0:
            raise HTTPError(404, "instance has no pixel data")
        stored = syntax(rec.transfer_syntax)
        if choice.transfer_syntax == "*" and not stored.native and rec.frames:
            media = stored.media_type
            bodies = [await archive.read_frame(rec, n) for n in range(1, len(rec.frames) + 1)]
            ctype = f"{media}; transfer-syntax={rec.transfer_syntax}"
            return _bulk_response(request, rec, [(ctype, b) for b in bodies], media, choice.multipart)
        data = await archive.pixel_data_native(rec)
        ctype = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}"
        return _bulk_response(request, rec, [(ctype, data)], OCTET_STREAM, choice.multipart)
    if not re.fullmatch(r"[0-9A-F]{8}(/\d+/[0-9A-F]{8})*", tag_path):
        raise HTTPError(400, f"malformed bulk data path {tag_path!r}")
    value = await archive.bulk_value(rec, tag_path)
    return _bulk_response(request, rec, [(OCTET_STREAM, value)], OCTET_STREAM, choice.multipart)


def _bulk_response(
    request: Request, rec: InstanceRecord, parts: list[tuple[str, bytes]], media: str, multipart: bool
) -> Response:
    etag = etag_for(rec.version, request.url.path, media, multipart)
    if not multipart and len(parts) == 1:
        # Single part: ETag/304 and Range, as Cornerstone3D's range requests expect.
        return body_response(request, parts[0][1], parts[0][0], etag)
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    boundary = _boundary(request)
    return Response(
        encode_multipart(boundary, parts),
        media_type=multipart_content_type(boundary, media),
        headers={"ETag": etag},
    )


# ---- delete ---------------------------------------------------------------------------------------


async def delete(request: Request) -> Response:
    await archive_of(request).delete(*uids(request))
    return Response(status_code=204)
