"""Progressive retrieval: the fidelity ladder of a master (`/layers`), and the preview layer count of a
series (`/series/{se}/layers`), chosen by storage.preview's rule."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.params import instance_uids, uid_param
from dicomweb.responses import HTTPError, archive_of
from storage import PREVIEW_RULE, NotReady, instance_preview_layers


async def layers(request: Request) -> Response:
    """Each frame's resolution levels and quality layers with their cumulative bytes, PSNR and
    maximum error, measured when the master was made, so a client can choose what to fetch; and the
    layer count `layers=preview` gives for this instance."""
    state = await archive_of(request).master_state(*instance_uids(request), hurry=True)
    if state.fidelity is None:
        if state.pending:
            raise NotReady("the layered master of this instance is still being made; retry shortly")
        reason = state.reason or "it has no pixel data that can be held as a lossless JPEG 2000 master"
        raise HTTPError(404, f"no layered master: {reason}")
    preview = instance_preview_layers(orjson.loads(state.fidelity))
    body = b'{"frames":' + state.fidelity + b',"preview_layers":' + orjson.dumps(preview) + b"}"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


async def series_layers(request: Request) -> Response:
    """The series' recommended preview layer count (the largest of its instances': every frame meets the
    rule), the rule, and each instance's count (null: no master yet, kept as received, or no lossy layer)."""
    study, series = uid_param(request, "study"), uid_param(request, "series")
    rows = await archive_of(request).series_preview(study, series)
    counts = [n for _, n, _ in rows if n is not None]
    body = {
        "preview_layers": max(counts) if counts else None,
        "rule": PREVIEW_RULE,
        "instances": [
            {"sop_instance_uid": sop, "preview_layers": n, "master": master} for sop, n, master in rows
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-cache"})
