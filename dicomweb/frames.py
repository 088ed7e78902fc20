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
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.conditional import body_response, etag_for, not_modified
from dicomweb.multipart import encode_multipart, make_boundary, multipart_content_type
from dicomweb.negotiation import EXPLICIT_LE, NATIVE, Choice, accept_ranges, choices, frame_media_type
from dicomweb.responses import HTTPError
from dicomweb.wado import DECODABLE, OCTET, frame_native_bytes, instance_records
from storage.archive import Archive
from storage.codec import CutError, cut, info, without_padding
from storage.index import InstanceRecord
from storage.preview import PREVIEW, preview_for_instance

J2K = "image/jp2"
HTJ2K = "image/jphc"
J2K_WHOLE, J2K_CUT = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
HT_WHOLE, HT_CUT = "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"
SINGLE_PART = {OCTET, J2K, HTJ2K, "image/jpeg", "image/jls", "image/dicom-rle", "image/jpx"}
# Media types whose frames are codestreams ending at a marker: sent without the fragment's pad byte.
CODESTREAMS = {J2K, HTJ2K, "image/jpeg", "image/jls", "image/jpx"}
# Part of every frame ETag: bumped when the bytes sent for the same request change (2: no pad byte).
FRAME_BYTES_VERSION = 2
# One item of a frame list: ASCII digits only (str.isdigit and \\d also take other scripts' digits).
_FRAME_NUMBER = re.compile(r"[0-9]+")
# More digits than any frame count: such a number is out of range, not a reason to build a huge int.
_MAX_DIGITS = 12


@dataclass(frozen=True)
class Subset:
    """What part of the master a request wants: None means "all"."""

    layers: int | None = None
    fsiz: tuple[int, int] | None = None
    preview: bool = False  # `layers=preview`: the count comes from the instance's ladder (storage/preview.py)

    @property
    def wanted(self) -> bool:
        return self.layers is not None or self.fsiz is not None or self.preview


@dataclass(frozen=True)
class Plan:
    media: str
    transfer_syntax: str
    kind: str  # stored | native | cut | htj2k


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
            raise HTTPError(400, f"malformed frame list {text!r}: {item!r} is not a frame number "
                                 "(positive whole numbers separated by commas, like 1,3,5)")
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


def _subset(request: Request) -> Subset:
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
    return Subset(layers, fsiz, preview)


async def _resolve_preview(archive: Archive, rec: InstanceRecord, subset: Subset) -> Subset:
    """`layers=preview` made a count for this instance; an instance without a master (a lossy original, a
    master still being made) has no preview to give, and is answered with the frame as it is."""
    layers = await preview_for_instance(archive.index.engine, rec.sop_uid, rec.blob_key) if rec.is_master else None
    return Subset(layers, subset.fsiz)


def _drop_levels(width: int, height: int, levels: int, fsiz: tuple[int, int] | None) -> int:
    """The most levels that can be dropped while the image stays at least fsiz (0 if none)."""
    if fsiz is None:
        return 0
    drop = 0
    while drop < levels and -(-width // (1 << (drop + 1))) >= fsiz[0] and -(-height // (1 << (drop + 1))) >= fsiz[1]:
        drop += 1
    return drop


def _plan(choice: Choice, rec: InstanceRecord, subset: Subset) -> Plan | None:
    """How to answer under this choice, or None if it cannot be done."""
    stored = rec.transfer_syntax
    addressable = bool(rec.frames)
    ts = choice.transfer_syntax
    if choice.media_type in (OCTET, "*/*", "*"):
        if ts == "*" and subset.wanted and rec.is_master:
            return Plan(J2K, J2K_CUT, "cut")
        if subset.wanted and rec.is_master:
            return None  # a cut cannot be uncompressed bytes
        if ts == "*":
            if not addressable or stored in NATIVE:
                return Plan(OCTET, EXPLICIT_LE, "native")
            return Plan(frame_media_type(stored), stored, "stored")
        if (ts or EXPLICIT_LE) == EXPLICIT_LE and stored in DECODABLE:
            return Plan(OCTET, EXPLICIT_LE, "native")
        return None
    if choice.media_type == J2K and rec.is_master and ts in (None, "*", J2K_WHOLE, J2K_CUT):
        return Plan(J2K, J2K_CUT, "cut") if ts != J2K_WHOLE or not subset.wanted else None
    if choice.media_type == HTJ2K and rec.is_master and ts in (None, "*", HT_WHOLE, HT_CUT):
        return Plan(HTJ2K, HT_CUT, "htj2k") if ts != HT_WHOLE or subset.fsiz is None else None
    stored_form = choice.media_type == frame_media_type(stored) and addressable and stored not in NATIVE
    if stored_form and ts in (None, "*", stored) and not subset.wanted:
        return Plan(choice.media_type, stored, "stored")
    return None


async def _body(archive: Archive, rec: InstanceRecord, number: int, plan: Plan, subset: Subset) -> tuple[bytes, str]:
    """Bytes of one frame and the transfer syntax they really are in."""
    if plan.kind == "stored":
        data = await archive.read_frame(rec, number)
        return (without_padding(data) if plan.media in CODESTREAMS else data), plan.transfer_syntax
    if plan.kind == "native":
        return await frame_native_bytes(archive, rec, number), EXPLICIT_LE
    master = await archive.read_frame(rec, number)
    head = info(master)
    drop = _drop_levels(head.width, head.height, head.levels, subset.fsiz)
    try:
        if plan.kind == "htj2k":
            # HTJ2K has a single quality layer: `layers` cannot apply, resolution levels can.
            whole = await archive.htj2k_frame(rec, number)
            return (whole, HT_WHOLE) if drop == 0 else (cut(whole, layers=None, drop_levels=drop), HT_CUT)
        layers = subset.layers if subset.layers is not None and subset.layers < head.layers else None
        if layers is None and drop == 0:
            return without_padding(master), J2K_WHOLE
        return cut(master, layers=layers, drop_levels=drop), J2K_CUT
    except CutError as exc:
        raise HTTPError(406, f"cannot cut this frame: {exc}") from None


def in_range(numbers: list[int], rec: InstanceRecord) -> list[int]:
    """The numbers, if the instance has all those frames (404 naming the first it lacks)."""
    missing = [n for n in numbers if n > rec.number_of_frames]
    if missing:
        raise HTTPError(404, f"frame {missing[0]} out of range: the instance has {rec.number_of_frames} frame(s)")
    return numbers


async def frames(request: Request) -> Response:
    numbers = frame_numbers(request.path_params["frames"])
    subset = _subset(request)
    rec = (await instance_records(request))[0]
    if rec.number_of_frames == 0:
        raise HTTPError(404, "instance has no pixel data frames")
    in_range(numbers, rec)
    archive: Archive = request.app.state.archive
    if subset.preview:
        subset = await _resolve_preview(archive, rec, subset)
    for choice in choices(accept_ranges(request), OCTET, SINGLE_PART):
        plan = _plan(choice, rec, subset)
        if plan is None or (not choice.multipart and len(numbers) > 1):
            continue
        etag = etag_for(FRAME_BYTES_VERSION, rec.blob_key, numbers, plan, subset, choice.multipart)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        parts = [await _body(archive, rec, n, plan, subset) for n in numbers]
        if not choice.multipart:
            body, ts = parts[0]
            return body_response(request, body, f"{plan.media}; transfer-syntax={ts}", etag)
        boundary = make_boundary(f"{request.url.path}?{request.url.query}|{choice}")
        body = encode_multipart(boundary, [(f"{plan.media}; transfer-syntax={ts}", b) for b, ts in parts])
        syntaxes = {ts for _, ts in parts}
        ctype = multipart_content_type(boundary, plan.media, syntaxes.pop() if len(syntaxes) == 1 else None)
        return Response(body, media_type=ctype, headers={"ETag": etag, "Cache-Control": "private, no-cache"})
    if subset.wanted and not rec.is_master:
        state = await archive.index.master_state(rec.study_uid, rec.series_uid, rec.sop_uid)
        # A master that appeared since `rec` was read is there on the retry.
        if state is not None and (state.pending or state.fidelity is not None):
            raise HTTPError(503, "layers/fsiz need the layered master, which is still being made; retry shortly")
        raise HTTPError(406, "layers/fsiz need a layered JPEG 2000 master, and this instance has none")
    reason = "application/octet-stream and transfer-syntax=* are always available"
    if subset.wanted:
        reason = "a cut (layers/fsiz) is available as image/jp2, image/jphc or transfer-syntax=*, not uncompressed"
    raise HTTPError(406, f"cannot provide frames in an acceptable form (stored as {rec.transfer_syntax}); {reason}")
