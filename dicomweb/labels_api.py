"""`GET` and `PUT /studies/{study}/labels`: an admin reads or sets a study's access labels
(storage/access_labels.py). PUT takes `{"labels": ["radiology", "research"]}` and replaces the set."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb.params import uid_param
from dicomweb.responses import HTTPError, archive_of
from storage import ApiKeyError, parse_labels

MAX_BODY = 64 * 1024


async def study_labels(request: Request) -> Response:
    study = uid_param(request, "study")
    labels = None
    if request.method == "PUT":
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise HTTPError(413, f"labels body larger than {MAX_BODY} bytes")
        try:
            doc = orjson.loads(body)
            given = doc["labels"]
            if not isinstance(given, list) or not all(isinstance(x, str) for x in given):
                raise TypeError
            labels = parse_labels(",".join(given))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise HTTPError(400, 'expected JSON {"labels": ["label", ...]}') from None
        except ApiKeyError as exc:
            raise HTTPError(400, str(exc)) from None
    return JSONResponse({"study": study, "labels": await archive_of(request).study_labels(study, labels)})
