"""QIDO-RS: search for studies, series and instances (PS3.18 10.6)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.auth import visible_labels
from dicomweb.params import uids
from dicomweb.responses import archive_of, check_json_accept, dicom_json
from storage import Level


async def _search(request: Request, level: Level) -> Response:
    check_json_accept(request)
    study = series = None
    if "study" in request.path_params:
        study, series, _ = uids(request)
    params = [(k, v) for k, v in request.query_params.multi_items() if k.lower() != "accept"]
    found = await archive_of(request).search(
        level, params, study, series, labels=visible_labels(request.scope)
    )
    headers = {}
    if found.remaining > 0:
        # PS3.18 8.3.4.4: say that results were cut, and how to get the rest.
        headers["Warning"] = (
            f'299 dicomweb "There are {found.remaining} additional results that can be requested '
            f'with offset={found.next_offset}"'
        )
    return dicom_json(request, orjson.dumps(found.matches), headers=headers)


async def studies(request: Request) -> Response:
    return await _search(request, "study")


async def series(request: Request) -> Response:
    return await _search(request, "series")


async def instances(request: Request) -> Response:
    return await _search(request, "instance")
