"""Progressive retrieval: the fidelity ladder of a master (`/layers`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.params import instance_uids
from dicomweb.responses import HTTPError, archive_of
from storage import NotReady


async def layers(request: Request) -> Response:
    """Each frame's resolution levels and quality layers with their cumulative bytes, PSNR and
    maximum error, measured when the master was made, so a client can choose what to fetch."""
    state = await archive_of(request).master_state(*instance_uids(request), hurry=True)
    if state.fidelity is None:
        if state.pending:
            raise NotReady("the layered master of this instance is still being made; retry shortly")
        reason = state.reason or "it has no pixel data that can be held as a lossless JPEG 2000 master"
        raise HTTPError(404, f"no layered master: {reason}")
    body = b'{"frames":' + state.fidelity + b"}"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})
