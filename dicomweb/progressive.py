"""Progressive retrieval: the fidelity ladder of a master (`/layers`), and the preview layer count of a
series (`/series/{se}/layers`), chosen by storage.preview's rule."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.params import instance_uids, uid_param
from dicomweb.responses import HTTPError, archive_of
from storage import PREVIEW_RULE, NotReady, instance_preview_layers, ladder_measured, with_measured_flags


async def layers(request: Request) -> Response:
    """Each frame's resolution levels and quality layers with their cumulative bytes, PSNR and
    maximum error, so a client can choose what to fetch; and the layer count `layers=preview` gives for
    this instance. A ladder not measured yet (it is measured after the master) is measured now; each
    step says whether it is measured (`measured`; false only if the master was replaced meanwhile: its
    `psnr` and `max_error` are then null), and so does the answer as a whole."""
    state = await archive_of(request).measured_master_state(*instance_uids(request))
    if state.fidelity is None:
        if state.pending:
            raise NotReady("the layered master of this instance is still being made; retry shortly")
        reason = state.reason or "it has no pixel data that can be held as a lossless JPEG 2000 master"
        raise HTTPError(404, f"no layered master: {reason}")
    frames = orjson.loads(state.fidelity)
    body = {
        "frames": with_measured_flags(frames),
        "measured": ladder_measured(frames),
        "preview_layers": instance_preview_layers(frames),
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-cache"})


async def series_layers(request: Request) -> Response:
    """The series' recommended preview layer count (the largest of its instances': every frame meets the
    rule), the rule, and each instance's count (null: no master yet, kept as received, or no lossy layer)
    with whether its ladder is measured (false: the count is the most layers the byte budget allows, which
    the measured ladder may lower; nothing is measured for this answer, a series can be a thousand
    instances)."""
    study, series = uid_param(request, "study"), uid_param(request, "series")
    rows = await archive_of(request).series_preview(study, series)
    counts = [row.preview_layers for row in rows if row.preview_layers is not None]
    body = {
        "preview_layers": max(counts) if counts else None,
        "rule": PREVIEW_RULE,
        "instances": [
            {
                "sop_instance_uid": row.sop_uid,
                "preview_layers": row.preview_layers,
                "master": row.master,
                "measured": row.measured,
            }
            for row in rows
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-cache"})
