"""`GET {root}/stats`: storage economics for administrators (admin scope; storage/stats.py says what each
figure means). The same JSON as `dicomweb stats --json`."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.responses import archive_of


async def stats(request: Request) -> Response:
    found = await archive_of(request).stats()
    # no-store: the figures change with every upload, and they say what an archive holds.
    return Response(
        orjson.dumps(found.to_json()), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
