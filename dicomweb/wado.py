"""WADO-RS: instances, metadata, frames and bulk data (PS3.18 10.4)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.conditional import body_response, etag_for, not_modified
from dicomweb.metadata_ready import ready_series_metadata
from dicomweb.multipart import (
    closing,
    encode_multipart,
    make_boundary,
    multipart_content_type,
    multipart_length,
    part_header,
)
from dicomweb.negotiation import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE,
    Choice,
    accept_ranges,
    choices,
    frame_media_type,
)
from dicomweb.params import uids
from dicomweb.responses import HTTPError, accepts_gzip, check_json_accept, dicom_json
from storage.archive import Archive
from storage.dicom_json import bulk_value
from storage.index import InstanceRecord
from storage.readahead import readahead
from storage.transcode import CannotTranscode, pixel_data_native, to_native

DICOM = "application/dicom"
OCTET = "application/octet-stream"
# What pydicom and its plugins decode, so Explicit VR Little Endian can be produced from it.
DECODABLE = NATIVE | {
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
}
CHUNK = 1 << 20
EAGER_DECODE_BYTES = 512 << 20


def _archive(request: Request) -> Archive:
    return request.app.state.archive


def _boundary(request: Request) -> str:
    # Same request, same bytes: the boundary depends on the URL and what was accepted.
    return make_boundary(f"{request.url.path}?{request.url.query}|{request.headers.get('accept', '')}")


async def instance_records(request: Request) -> list[InstanceRecord]:
    study, series, sop = uids(request)
    recs = await _archive(request).index.instances(study, series, sop)
    if not recs:
        what = "instance" if sop else "series" if series else "study"
        raise HTTPError(404, f"no such {what}")
    return recs


# ---- instances ------------------------------------------------------------------------------------

def _instance_syntax(choice: Choice, rec: InstanceRecord) -> str | None:
    """Transfer syntax to send `rec` in for this choice, or None if it cannot be produced."""
    ts = choice.transfer_syntax or EXPLICIT_LE
    if ts == "*" or ts == rec.transfer_syntax:
        return rec.transfer_syntax
    if ts in (EXPLICIT_LE, IMPLICIT_LE) and rec.transfer_syntax in DECODABLE:
        return ts
    return None


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            yield chunk
    finally:
        fh.close()


async def retrieve(request: Request) -> Response:
    recs = await instance_records(request)
    single_ok = {DICOM} if "sop" in request.path_params else set()
    archive = _archive(request)
    for choice in choices(accept_ranges(request), DICOM, single_ok):
        if choice.media_type not in (DICOM, "*/*", "*"):
            continue
        syntaxes = [_instance_syntax(choice, rec) for rec in recs]
        plan = [(rec, ts) for rec, ts in zip(recs, syntaxes, strict=True) if ts is not None]
        if len(plan) < len(recs):
            continue
        return await _instances_response(request, archive, plan, choice.multipart)
    stored = sorted({r.transfer_syntax for r in recs})
    raise HTTPError(406, f"cannot produce an acceptable representation; stored as {', '.join(stored)}, "
                         f"and {EXPLICIT_LE} or transfer-syntax=* can always be asked for")


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
            ready[rec.sop_uid] = await asyncio.to_thread(to_native, archive.blob_path(rec), ts)
            budget -= len(ready[rec.sop_uid])
        except CannotTranscode as exc:
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
            async for chunk in _file_chunks(archive.blob_path(rec)):
                yield chunk
        elif rec.sop_uid in ready:
            yield ready.pop(rec.sop_uid)
        else:
            yield await asyncio.to_thread(to_native, archive.blob_path(rec), ts)

    if not multipart:
        rec, ts = plan[0]
        headers = {"Content-Length": str(rec.size)} if ts == rec.transfer_syntax else {}
        return StreamingResponse(body_of(rec, ts), media_type=f"{DICOM}; transfer-syntax={ts}", headers=headers)


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
    # A series, to a client that takes gzip (every viewer): its ready compressed body.
    ready = await ready_series_metadata(request, study, series) if series and not sop and accepts_gzip(request) else None
    if ready is not None and series is not None:
        readahead(_archive(request)).open_series(study, series)  # decode its frames ahead
        return ready
    rows = await _archive(request).index.metadata(study, series, sop)
    if not rows:
        raise HTTPError(404, f"no such {'instance' if sop else 'series' if series else 'study'}")
    if series is not None and sop is None:  # a series is being opened: decode its frames ahead
        readahead(_archive(request)).open_series(study, series)
    return dicom_json(request, b"[" + b",".join(rows) + b"]")


# ---- frames (see frames.py) -----------------------------------------------------------------------

async def frame_native_bytes(archive: Archive, rec: InstanceRecord, number: int) -> bytes:
    """Frame `number` uncompressed, little endian: read as stored when it already is, else decoded."""
    if rec.transfer_syntax in ("1.2.840.10008.1.2", EXPLICIT_LE) and rec.frames:
        return await archive.read_frame(rec, number)
    ahead = readahead(archive)  # decode the rest of the series ahead of this client; reuse a decode under way
    ahead.open_series(rec.study_uid, rec.series_uid, rec, number)
    if (data := await ahead.ready_frame(rec, number)) is not None or (data := await ahead.waiting(rec, number)):
        return data
    try:
        return await archive.native_frame(rec, number)
    except CannotTranscode as exc:
        raise HTTPError(406, str(exc)) from None


# ---- bulk data ------------------------------------------------------------------------------------

# Pixel Data is sent decoded (or as stored, when asked) frame by frame; every other value, float and
# double float pixel data included, as its bytes (storage.dicom_json.bulk_value).
PIXEL_PATH = "7FE00010"


async def bulkdata(request: Request) -> Response:
    recs = await instance_records(request)
    rec = recs[0]
    archive = _archive(request)
    tag_path = request.path_params["tagpath"].upper()
    ranges = choices(accept_ranges(request), OCTET, {OCTET})
    choice = ranges[0] if ranges else Choice(OCTET, None, True)
    if tag_path == PIXEL_PATH:
        if rec.number_of_frames == 0:
            raise HTTPError(404, "instance has no pixel data")
        if choice.transfer_syntax == "*" and rec.transfer_syntax not in NATIVE and rec.frames:
            media = frame_media_type(rec.transfer_syntax)
            bodies = [await archive.read_frame(rec, n) for n in range(1, len(rec.frames) + 1)]
            ctype = f"{media}; transfer-syntax={rec.transfer_syntax}"
            return _bulk_response(request, rec, [(ctype, b) for b in bodies], media, choice.multipart)
        try:
            data = await asyncio.to_thread(pixel_data_native, archive.blob_path(rec))
        except CannotTranscode as exc:
            raise HTTPError(406, str(exc)) from None
        ctype = f"{OCTET}; transfer-syntax={EXPLICIT_LE}"
        return _bulk_response(request, rec, [(ctype, data)], OCTET, choice.multipart)
    if not re.fullmatch(r"[0-9A-F]{8}(/\d+/[0-9A-F]{8})*", tag_path):
        raise HTTPError(400, f"malformed bulk data path {tag_path!r}")
    value = await asyncio.to_thread(bulk_value, archive.blob_path(rec), tag_path)
    if value is None:
        raise HTTPError(404, f"no bulk data at {tag_path}")
    return _bulk_response(request, rec, [(OCTET, value)], OCTET, choice.multipart)


def _bulk_response(
    request: Request, rec: InstanceRecord, parts: list[tuple[str, bytes]], media: str, multipart: bool
) -> Response:
    etag = etag_for(rec.blob_key, request.url.path, media, multipart)
    if not multipart and len(parts) == 1:
        # Single part: ETag/304 and Range, as Cornerstone3D's range requests expect.
        return body_response(request, parts[0][1], parts[0][0], etag)
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    boundary = _boundary(request)
    return Response(encode_multipart(boundary, parts), media_type=multipart_content_type(boundary, media),
                    headers={"ETag": etag})


# ---- delete ---------------------------------------------------------------------------------------

async def delete(request: Request) -> Response:
    study, series, sop = uids(request)
    removed = await _archive(request).delete(study, series, sop)
    if not removed:
        raise HTTPError(404, f"no such {'instance' if sop else 'series' if series else 'study'}")
    return Response(status_code=204)
