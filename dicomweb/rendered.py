"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5, 10.4): JPEG or PNG for browsers.

What each resource returns:

* ``.../frames/{list}/rendered``: each listed frame; one frame is a single image, several a
  ``multipart/related; type="image/jpeg"`` (or png).
* ``.../instances/{sop}/rendered``: the first frame as a single image; asked for as
  ``multipart/related``, every frame of the instance.
* ``/studies/{study}[/series/{series}]/rendered``: ``multipart/related``, the first frame of each
  instance that has pixel data, series by Series Number, instances by Instance Number. An Accept
  naming only single-part images (``image/jpeg``) gets that image when there is just one, else 406.
* ``.../thumbnail`` (all four levels): one image, THUMBNAIL_SIZE square unless ``viewport`` says
  otherwise. A study or series is represented by the middle instance of its first series with
  images, an instance by its middle frame, a frame list by its first frame.

Responses carry an ETag (from the blobs and frames rendered and the parameters) and
``Cache-Control: private, max-age=3600``; ``If-None-Match`` gets 304 without rendering. Identical
requests give identical bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, replace

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.conditional import etag_for, not_modified
from dicomweb.frames import frame_numbers, in_range
from dicomweb.multipart import closing, make_boundary, multipart_content_type, part_header
from dicomweb.negotiation import accept_ranges
from dicomweb.responses import HTTPError, archive_of, base_url
from dicomweb.wado import instance_records
from storage import (
    DEFAULT_QUALITY,
    JPEG,
    MEDIA_TYPES,
    PNG,
    THUMBNAIL_SIZE,
    WINDOW_FUNCTIONS,
    Archive,
    BadRequest,
    CannotProduce,
    InstanceRecord,
    NotFound,
    Region,
    RenderOptions,
    Viewport,
    Window,
)

log = logging.getLogger(__name__)

CACHE_CONTROL = "private, max-age=3600"
# Bump when rendering changes, so clients' cached ETags stop matching.
RENDER_VERSION = "2"
# Multipart parts rendered before answering, so failures among them give an exact status and
# Warning; the rest are rendered while streaming (a failure there is logged and the part left out).
EAGER_PARTS = 32
# Parts rendered at once; OpenJPEG, numpy and Pillow release the GIL while they work.
LOOKAHEAD = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class Job:
    rec: InstanceRecord
    number: int  # 1-based frame number


@dataclass(frozen=True)
class Wanted:
    """An acceptable answer: the image media type, and multipart (True), single (False) or either."""

    media_type: str
    multipart: bool | None


# ---- handlers ---------------------------------------------------------------------------------


async def rendered(request: Request) -> Response:
    """``/rendered`` of a study, series, instance or frame list."""
    options = rendering_options(request, thumbnail=False)
    wanted = acceptable(request)
    numbers = frame_numbers(request.path_params["frames"]) if "frames" in request.path_params else []
    recs = await instance_records(request)
    if numbers:
        rec = _pixel_instance(recs[0])
        jobs = [Job(rec, n) for n in in_range(numbers, rec)]
    elif "sop" in request.path_params:
        rec = _pixel_instance(recs[0])
        # The first frame, unless the client asked for multipart: then every frame.
        asked = choose(wanted, 1)
        all_frames = asked is not None and asked[1] and rec.number_of_frames > 1
        jobs = [Job(rec, n) for n in range(1, rec.number_of_frames + 1)] if all_frames else [Job(rec, 1)]
    else:
        images = await archive_of(request).in_display_order([r for r in recs if r.number_of_frames > 0])
        if not images:
            raise HTTPError(406, "nothing to render: no instance here has pixel data")
        jobs = [Job(rec, 1) for rec in images]
        return await _respond(request, "rendered", jobs, options, wanted, collection=True)
    return await _respond(request, "rendered", jobs, options, wanted)


async def thumbnail(request: Request) -> Response:
    """``/thumbnail`` of a study, series, instance or frame list: one representative image."""
    options = rendering_options(request, thumbnail=True)
    wanted = acceptable(request)
    numbers = frame_numbers(request.path_params["frames"]) if "frames" in request.path_params else []
    recs = await instance_records(request)
    if numbers:
        rec = _pixel_instance(recs[0])
        job = Job(rec, in_range(numbers, rec)[0])
    elif "sop" in request.path_params:
        rec = _pixel_instance(recs[0])
        job = Job(rec, _middle(rec.number_of_frames))
    else:
        rec = await _representative(request, recs)
        job = Job(rec, _middle(rec.number_of_frames))
    return await _respond(request, "thumbnail", [job], options, wanted)


# ---- query parameters (PS3.18 8.3.5.1) --------------------------------------------------------


def rendering_options(request: Request, *, thumbnail: bool) -> RenderOptions:
    """viewport, window and quality from the query; annotation, charset and iccprofile are accepted
    and ignored. The media type is filled in after negotiation."""
    params = request.query_params
    viewport = parse_viewport(params["viewport"], thumbnail=thumbnail) if "viewport" in params else None
    if thumbnail and viewport is None:
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    window = parse_window(params["window"]) if "window" in params else None
    quality = parse_quality(params["quality"]) if "quality" in params else DEFAULT_QUALITY
    return RenderOptions(viewport=viewport, window=window, quality=quality)


def parse_viewport(text: str, *, thumbnail: bool = False) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (thumbnails: ``vw,vh`` only). Empty vw or vh leaves that
    dimension free; empty sx, sy are 0; empty sw, sh reach the image's edge; negative sw, sh flip."""
    values = [v.strip() for v in text.split(",")]
    forms = "vw,vh" if thumbnail else "vw,vh or vw,vh,sx,sy,sw,sh"
    if len(values) != 2 and (thumbnail or len(values) != 6):
        raise HTTPError(400, f"viewport={text!r}: expected {forms}")
    vw, vh = (_integer(v, "viewport vw, vh", minimum=1) for v in values[:2])
    region = None
    if len(values) == 6:
        sx, sy = (_integer(v, "viewport sx, sy", minimum=0) or 0 for v in values[2:4])
        sw, sh = (_integer(v, "viewport sw, sh") for v in values[4:6])
        if sw == 0 or sh == 0:
            raise HTTPError(400, f"viewport={text!r}: sw and sh cannot be 0")
        region = Region(sx, sy, sw, sh)
    return Viewport(vw, vh, region)


def _integer(text: str, what: str, minimum: int | None = None) -> int | None:
    if text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{what} must be integers, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise HTTPError(400, f"{what} must be at least {minimum}, got {value}")
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]``; function ``linear`` (default), ``linear-exact`` or ``sigmoid``."""
    values = [v.strip() for v in text.split(",")]
    if len(values) not in (2, 3):
        raise HTTPError(400, f"window={text!r}: expected center,width[,function]")
    try:
        center, width = float(values[0]), float(values[1])
    except ValueError:
        raise HTTPError(400, f"window={text!r}: center and width must be numbers") from None
    function = values[2].lower().replace("_", "-") if len(values) == 3 and values[2] else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise HTTPError(400, f"window function {values[2]!r} is not one of {', '.join(WINDOW_FUNCTIONS)}")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise HTTPError(400, f"window={text!r}: center and width must be finite")
    if function == "linear" and width < 1:
        raise HTTPError(400, "window width must be at least 1 for the linear function (PS3.3 C.11.2.1.2)")
    if width <= 0:
        raise HTTPError(400, f"window width must be greater than 0 for {function}")
    return Window(center, width, function)


def parse_quality(text: str) -> int:
    try:
        quality = int(text)
    except ValueError:
        raise HTTPError(400, f"quality must be an integer from 1 to 100, got {text!r}") from None
    if not 1 <= quality <= 100:
        raise HTTPError(400, f"quality must be from 1 to 100, got {quality}")
    return quality


# ---- negotiation ------------------------------------------------------------------------------


def acceptable(request: Request) -> list[Wanted]:
    """What the Accept header (or ``accept=`` query) allows, in order of preference.

    ``image/*`` means JPEG; ``*/*`` or no Accept means JPEG, single or multipart as the resource
    needs; ``multipart/related`` without ``type`` means JPEG parts. Transfer syntax parameters
    do not apply to rendered media types (PS3.18 8.7.4) and are ignored."""
    ranges = accept_ranges(request)
    if not ranges:
        return [Wanted(JPEG, None)]
    out = []
    for r in ranges:
        if r.type in MEDIA_TYPES:
            out.append(Wanted(r.type, False))
        elif r.type == "image/*":
            out.append(Wanted(JPEG, False))
        elif r.type == "*/*":
            out.append(Wanted(JPEG, None))
        elif r.type in ("multipart/related", "multipart/*"):
            inner = (r.param("type") or JPEG).lower()
            inner = JPEG if inner in ("image/*", "*/*") else inner
            if inner in MEDIA_TYPES:
                out.append(Wanted(inner, True))
    if not out:
        raise HTTPError(
            406, f"rendered resources are available as {JPEG} or {PNG} (or multipart/related of them)"
        )
    return out


def choose(wanted: list[Wanted], parts: int, *, collection: bool = False) -> tuple[str, bool] | None:
    """(media type, multipart) for a response of ``parts`` images, or None. A collection (study,
    series) is multipart unless the client asked for a single image and there is just one."""
    for w in wanted:
        if w.multipart or (w.multipart is None and (collection or parts > 1)):
            return w.media_type, True
        if parts == 1:
            return w.media_type, False
    return None


# ---- selecting what to render -----------------------------------------------------------------


def _pixel_instance(rec: InstanceRecord) -> InstanceRecord:
    if rec.number_of_frames == 0:
        raise HTTPError(406, "this instance has no pixel data to render")
    return rec


def _middle(count: int) -> int:
    return (count + 1) // 2


async def _representative(request: Request, recs: list[InstanceRecord]) -> InstanceRecord:
    """The middle instance (by Instance Number) of the first series that has images."""
    images = await archive_of(request).in_display_order([r for r in recs if r.number_of_frames > 0])
    if not images:
        raise HTTPError(406, "nothing to render: no instance here has pixel data")
    first = [r for r in images if r.series_uid == images[0].series_uid]
    return first[(len(first) - 1) // 2]


# ---- responding -------------------------------------------------------------------------------


async def _respond(
    request: Request,
    kind: str,
    jobs: list[Job],
    options: RenderOptions,
    wanted: list[Wanted],
    *,
    collection: bool = False,
) -> Response:
    chosen = choose(wanted, len(jobs), collection=collection)
    if chosen is None:
        raise HTTPError(
            406,
            f'{len(jobs)} images need multipart/related; type="{JPEG}" (or {PNG}), '
            "or ask for a single frame or the thumbnail",
        )
    media, multipart = chosen
    options = replace(options, media_type=media)
    archive = archive_of(request)
    if kind == "thumbnail" and media == JPEG and not multipart:
        # Before the ETag, which then names them: a master's ladder is measured after it is made
        # (storage.ladder), and the same blob's thumbnail may then decode fewer layers.
        options = replace(options, layer_errors=await archive.layer_errors(jobs[0].rec, jobs[0].number))
    # Multipart bodies name each part's URL (Content-Location), so they depend on the host too.
    etag = _etag(kind, jobs, options, base_url(request) if multipart else "")
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    if not multipart:
        job = jobs[0]
        body = await archive.render(job.rec, job.number, options)
        return Response(body, media_type=media, headers=headers)
    return await _multipart(request, jobs, options, media, etag, headers)


def _etag(kind: str, jobs: list[Job], options: RenderOptions, multipart_base: str) -> str:
    """Names the exact bytes: what is rendered (its version changes when a master replaces the
    received file) and how; ``multipart_base`` is the base URL of a multipart body, else empty."""
    rendered_frames = [f"{job.rec.version}#{job.number}" for job in jobs]
    return etag_for(RENDER_VERSION, kind, multipart_base, repr(options), *rendered_frames)


async def _rendered_parts(
    archive: Archive, jobs: list[Job], options: RenderOptions
) -> AsyncGenerator[tuple[Job, bytes | None, str], None]:
    """(job, image or None, why not) in order, rendering up to LOOKAHEAD parts ahead."""
    queue: deque[tuple[Job, asyncio.Task[bytes]]] = deque()
    pending: Iterator[Job] = iter(jobs)

    def launch() -> None:
        job = next(pending, None)
        if job is not None:
            queue.append((job, asyncio.ensure_future(archive.render(job.rec, job.number, options))))

    for _ in range(LOOKAHEAD):
        launch()
    try:
        while queue:
            job, task = queue.popleft()
            launch()
            try:
                body, reason = await task, ""
            except (BadRequest, CannotProduce, NotFound) as exc:
                body, reason = None, str(exc)
            yield job, body, reason
    finally:
        for _, task in queue:
            task.cancel()


async def _multipart(
    request: Request, jobs: list[Job], options: RenderOptions, media: str, etag: str, headers: dict[str, str]
) -> Response:
    archive = archive_of(request)
    boundary = make_boundary(etag)
    parts = _rendered_parts(archive, jobs, options)
    head = []
    try:
        async for item in parts:
            head.append(item)
            if len(head) == EAGER_PARTS:
                break
    except BaseException:
        await parts.aclose()
        raise
    failed = [reason for _, body, reason in head if body is None]
    if len(head) == len(jobs) and len(failed) == len(jobs):
        await parts.aclose()
        raise HTTPError(406, f"cannot render any of the {len(jobs)} image(s): {failed[0]}")
    status = 200
    if failed:
        status = 206
        reason = " ".join(failed[0].replace('"', "'").split())[:200]  # one line, fit for a header
        headers["Warning"] = f'299 dicomweb "{len(failed)} image(s) left out: {reason}"'
    root = base_url(request)

    def part(job: Job, body: bytes) -> bytes:
        rec = job.rec
        where = (
            f"{root}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{rec.sop_uid}"
            f"/frames/{job.number}/rendered"
        )
        return part_header(boundary, media, {"Content-Location": where}) + body + b"\r\n"

    if len(head) == len(jobs):
        # Everything is rendered already: one body, with a Content-Length.
        await parts.aclose()
        body = b"".join(part(job, data) for job, data, _ in head if data is not None) + closing(boundary)
        return Response(
            body, status_code=status, headers=headers, media_type=multipart_content_type(boundary, media)
        )

    async def stream() -> AsyncIterator[bytes]:
        try:
            for job, data, _ in head:
                if data is not None:
                    yield part(job, data)
            async for job, data, reason in parts:
                if data is None:
                    log.warning(
                        "left %s frame %d out of a rendered response: %s", job.rec.sop_uid, job.number, reason
                    )
                else:
                    yield part(job, data)
            yield closing(boundary)
        finally:
            await parts.aclose()

    return StreamingResponse(
        stream(), status_code=status, headers=headers, media_type=multipart_content_type(boundary, media)
    )
