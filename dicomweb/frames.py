"""WADO-RS frames, including progressive retrieval from layered masters.

`layers=N` keeps the first N quality layers, `fsiz=W,H` the smallest resolution level at least W x H;
the server cuts them out of the master codestream without re-encoding. Media types:

- `image/jp2`: JPEG 2000 (1.2.840.10008.1.2.4.90 when it is the whole master, .91 for a cut)
- `image/jphc`: HTJ2K, RPCL with TLM (.202 for the whole lossless frame, .203 for a resolution cut)
- `application/octet-stream`: uncompressed, full fidelity only
- `transfer-syntax=*`: as stored (a cut, as `image/jp2`, when one is asked for)
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.conditional import body_response, etag_for, not_modified
from dicomweb.multipart import encode_multipart, make_boundary, multipart_content_type
from dicomweb.negotiation import accept_ranges, choices
from dicomweb.responses import HTTPError, archive_of
from dicomweb.wado import instance_records
from storage import OCTET_STREAM, PREVIEW, InstanceRecord, NotReady, Subset, plan_frame

SINGLE_PART = {
    OCTET_STREAM,
    "image/jp2",
    "image/jphc",
    "image/jpeg",
    "image/jls",
    "image/dicom-rle",
    "image/jpx",
}
# Part of every frame ETag: bumped when the bytes sent for the same request change (2: no pad byte).
FRAME_BYTES_VERSION = 2
# One item of a frame list: ASCII digits only (str.isdigit and \\d also take other scripts' digits).
_FRAME_NUMBER = re.compile(r"[0-9]+")
# More digits than any frame count: such a number is out of range, not a reason to build a huge int.
_MAX_DIGITS = 12


def frame_numbers(text: str) -> list[int]:
    """The frame numbers of a `{frames}` path segment (PS3.18 8.3.1: a comma-separated list of
    positive integers, frames counted from 1). Anything else is the client's error: 400 with the item
    at fault, never a guess (an empty item is not skipped, "1 2" is not 12)."""
    numbers = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise HTTPError(400, f"malformed frame list {text!r}: item {position} is empty")
        if not _FRAME_NUMBER.fullmatch(item):
            if item.startswith("-") and _FRAME_NUMBER.fullmatch(item[1:]):
                raise HTTPError(400, f"frame numbers start at 1, got {item!r} in {text!r}")
            raise HTTPError(
                400,
                f"malformed frame list {text!r}: {item!r} is not a frame number "
                "(positive whole numbers separated by commas, like 1,3,5)",
            )
        if len(item.lstrip("0")) > _MAX_DIGITS:
            raise HTTPError(404, f"frame {item[:20]}... out of range")
        number = _whole(item)
        if number < 1:
            raise HTTPError(400, f"frame numbers start at 1, got {item!r} in {text!r}")
        numbers.append(number)
    return numbers


def _whole(digits: str) -> int:
    """ASCII digits as an int, capped above any real count (Python refuses ints of over 4300 digits)."""
    return int(digits) if len(digits.lstrip("0")) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _subset(request: Request) -> tuple[Subset, bool]:
    """The subset asked for, and whether its layer count is `preview` (chosen per instance by the server
    from the fidelity ladder: storage.preview)."""
    layers = fsiz = None
    preview = request.query_params.get("layers") == PREVIEW
    if (text := request.query_params.get("layers")) is not None and not preview:
        if not _FRAME_NUMBER.fullmatch(text) or _whole(text) < 1:
            raise HTTPError(400, f"layers must be a positive integer or {PREVIEW!r}, got {text[:40]!r}")
        layers = _whole(text)
    if (text := request.query_params.get("fsiz")) is not None:
        m = re.fullmatch(r"\s*([0-9]+)\s*,\s*([0-9]+)\s*", text)
        if not m or _whole(m.group(1)) < 1 or _whole(m.group(2)) < 1:
            raise HTTPError(400, f"fsiz must be W,H with positive integers, got {text[:40]!r}")
        fsiz = (_whole(m.group(1)), _whole(m.group(2)))
    return Subset(layers, fsiz), preview


def in_range(numbers: list[int], rec: InstanceRecord) -> list[int]:
    """The numbers, if the instance has all those frames (404 naming the first it lacks)."""
    missing = [n for n in numbers if n > rec.number_of_frames]
    if missing:
        raise HTTPError(
            404, f"frame {missing[0]} out of range: the instance has {rec.number_of_frames} frame(s)"
        )
    return numbers


async def frames(request: Request) -> Response:
    numbers = frame_numbers(request.path_params["frames"])
    subset, preview = _subset(request)
    rec = (await instance_records(request))[0]
    if rec.number_of_frames == 0:
        raise HTTPError(404, "instance has no pixel data frames")
    in_range(numbers, rec)
    archive = archive_of(request)
    wanted = choices(accept_ranges(request), OCTET_STREAM, SINGLE_PART)
    answerable = any(plan_frame(c.media_type, c.transfer_syntax, rec, subset) for c in wanted)
    if not rec.is_master and (subset.wanted or preview or not answerable):
        # Only a master answers this (a cut, HTJ2K): hurry it if it is still being made.
        rec = await archive.hurry_master(rec)
    if preview:
        # The instance's own preview count; without a master (still being made, or none) the frame as it is.
        subset = Subset(await archive.preview_layers(rec), subset.fsiz)
    for choice in wanted:
        plan = plan_frame(choice.media_type, choice.transfer_syntax, rec, subset)
        if plan is None or (not choice.multipart and len(numbers) > 1):
            continue
        etag = etag_for(FRAME_BYTES_VERSION, rec.version, numbers, plan, subset, choice.multipart)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        parts = [await archive.frame(rec, n, plan, subset) for n in numbers]
        if not choice.multipart:
            body, ts = parts[0]
            return body_response(request, body, f"{plan.media_type}; transfer-syntax={ts}", etag)
        boundary = make_boundary(f"{request.url.path}?{request.url.query}|{choice}")
        body = encode_multipart(
            boundary, [(f"{plan.media_type}; transfer-syntax={ts}", b) for b, ts in parts]
        )
        syntaxes = {ts for _, ts in parts}
        ctype = multipart_content_type(
            boundary, plan.media_type, syntaxes.pop() if len(syntaxes) == 1 else None
        )
        return Response(body, media_type=ctype, headers={"ETag": etag, "Cache-Control": "private, no-cache"})
    if subset.wanted and not rec.is_master:
        state = await archive.master_state(rec.study_uid, rec.series_uid, rec.sop_uid)
        # A master that appeared since `rec` was read is there on the retry.
        if state.pending or state.fidelity is not None or rec.pending_master:
            raise NotReady("layers/fsiz need the layered master, which is still being made; retry shortly")
        raise HTTPError(406, "layers/fsiz need a layered JPEG 2000 master, and this instance has none")
    reason = "application/octet-stream and transfer-syntax=* are always available"
    if subset.wanted:
        reason = (
            "a cut (layers/fsiz) is available as image/jp2, image/jphc or transfer-syntax=*, not uncompressed"
        )
    raise HTTPError(
        406, f"cannot provide frames in an acceptable form (stored as {rec.transfer_syntax}); {reason}"
    )
