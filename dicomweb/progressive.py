"""Progressive retrieval: the fidelity ladder of a master (`/layers`), and the preview layer count of a
series (`/series/{se}/layers`), chosen by storage/preview.py's rule."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.params import uids
from dicomweb.responses import HTTPError
from storage.preview import MAX_BYTES_FRACTION, MIN_PSNR_DB, RULE, instance_preview_layers, series_preview


async def layers(request: Request) -> Response:
    """Each frame's resolution levels and quality layers with their cumulative bytes, PSNR and
    maximum error, measured when the master was made, so a client can choose what to fetch; and the
    layer count `layers=preview` gives for this instance."""
    study, series, sop = uids(request)
    state = await request.app.state.archive.index.master_state(study, series, sop)
    if state is None:
        raise HTTPError(404, "no such instance")
    if state.fidelity is None:
        if state.pending:
            raise HTTPError(503, "the layered master of this instance is still being made; retry shortly")
        reason = state.reason or "it has no pixel data that can be held as a lossless JPEG 2000 master"
        raise HTTPError(404, f"no layered master: {reason}")
    preview = instance_preview_layers(orjson.loads(state.fidelity))
    body = b'{"frames":' + state.fidelity + b',"preview_layers":' + orjson.dumps(preview) + b"}"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


async def series_layers(request: Request) -> Response:
    """The series' recommended preview layer count (the largest of its instances': every frame meets the
    rule), the rule, and each instance's count (null: no master yet, kept as received, or no lossy layer)."""
    study, series, _ = uids(request)
    assert series is not None  # the route has {series}
    rows = await series_preview(request.app.state.archive.index.engine, study, series)
    if rows is None:
        raise HTTPError(404, "no such series")
    counts = [n for _, n, _ in rows if n is not None]
    body = {
        "preview_layers": max(counts) if counts else None,
        "rule": {"text": RULE, "max_bytes_fraction": MAX_BYTES_FRACTION, "min_psnr_db": MIN_PSNR_DB},
        "instances": [{"sop_instance_uid": sop, "preview_layers": n, "master": master} for sop, n, master in rows],
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-cache"})
