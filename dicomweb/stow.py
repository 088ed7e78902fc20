"""STOW-RS: POST /studies and /studies/{study} (PS3.18 10.5)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import aiofiles
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomweb.accept import parse_accept
from dicomweb.multipart import MultipartError, Part, boundary_from_content_type, read_multipart
from dicomweb.params import uid_param
from dicomweb.responses import HTTPError, archive_of, dicom_json
from storage import BASE_PLACEHOLDER, CANNOT_UNDERSTAND, Outcome, Upload

DICOM = "application/dicom"


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


async def _receive(request: Request, tmpdir: str, accept: Callable[[Part], None]) -> None:
    """Spool the body's parts to files in `tmpdir`, handing each to `accept` as soon as it is complete."""
    settings = request.app.state.settings
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"malformed Content-Length {declared!r}")
        if int(declared) > settings.max_upload_bytes:
            raise HTTPError(
                413, f"upload of {declared} bytes exceeds the limit of {settings.max_upload_bytes}"
            )
    content_type = request.headers.get("content-type", "")
    media = _media(content_type)
    if media == "multipart/related":
        ranges = parse_accept(content_type)
        part_type = (ranges[0].param("type") if ranges else None) or DICOM
        if part_type.lower() != DICOM:
            raise HTTPError(
                415, f"multipart/related of type {part_type!r} is not supported: send application/dicom"
            )
        try:
            boundary = boundary_from_content_type(content_type)
            await read_multipart(
                request.stream(),
                boundary,
                tmpdir,
                max_part_size=settings.max_upload_bytes,
                max_parts=settings.max_parts,
                on_part=accept,
            )
            return
        except MultipartError as exc:
            raise HTTPError(400, f"malformed multipart body: {exc}") from None
    if media == DICOM:
        path = os.path.join(tmpdir, "single.dcm")
        size = 0
        async with aiofiles.open(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise HTTPError(413, "upload exceeds the size limit")
                await fh.write(chunk)
        accept(Part(headers={"content-type": content_type}, content_type=content_type, path=path, size=size))
        return
    raise HTTPError(
        415, f'unsupported media type {media or "(none)"!r}: use multipart/related; type="application/dicom"'
    )


def _sop_ref(o: Outcome, base: str) -> dict:
    item: dict = {}
    if o.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
    if o.sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [o.sop_uid]}
    if o.stored:
        url = f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_uid}"
        item["00081190"] = {"vr": "UR", "Value": [url]}
    else:
        item["00081197"] = {"vr": "US", "Value": [o.failure_code]}
        # A readable reason beside the code: ErrorComment (0000,0902).
        item["00000902"] = {"vr": "LO", "Value": [o.reason[:64]]}
    return item


def _response_body(outcomes: list[Outcome], url_study: str | None) -> dict:
    base = BASE_PLACEHOLDER
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    body: dict = {}
    studies = {o.study_uid for o in stored}
    study = url_study or (studies.pop() if len(studies) == 1 else None)
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_sop_ref(o, base) for o in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_sop_ref(o, base) for o in stored]}
    return body


async def store(request: Request) -> Response:
    study = uid_param(request, "study") if "study" in request.path_params else None
    async with archive_of(request).upload(study) as batch:
        outcomes = await _store(request, batch)
    n_ok = sum(o.stored for o in outcomes)
    status = 200 if n_ok == len(outcomes) else 202 if n_ok else 409
    body = orjson.dumps(_response_body(outcomes, study))
    return dicom_json(request, body, status=status)


async def _store(request: Request, batch: Upload) -> list[Outcome]:
    # Outcomes by part number (from 1): a failure item without UIDs must still say which part it was.
    refused: dict[int, Outcome] = {}
    ingested: list[int] = []

    def accept(part: Part) -> None:
        number = len(refused) + len(ingested) + 1
        if _media(part.content_type) not in ("", DICOM):
            refused[number] = Outcome(
                False,
                failure_code=CANNOT_UNDERSTAND,
                reason=f"type {_media(part.content_type)} is not application/dicom",
            )
        elif part.size == 0:
            refused[number] = Outcome(False, failure_code=CANNOT_UNDERSTAND, reason="empty part")
        else:
            batch.add(Path(part.path), part.size)
            ingested.append(number)

    try:
        await _receive(request, batch.folder, accept)
    except ClientDisconnect:
        raise HTTPError(400, "client disconnected before the upload was complete") from None
    by_part = dict(zip(ingested, await batch.finish(), strict=True)) | refused
    for number, outcome in by_part.items():
        if not outcome.stored:
            outcome.reason = f"part {number}: {outcome.reason}"
    return [by_part[n] for n in sorted(by_part)]
