"""`GET` and `PUT /studies/{study}/labels`: an admin reads or sets a study's access labels
(storage/access_labels.py). PUT takes `{"labels": ["radiology", "research"]}` and replaces the set."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb.params import uid_param
from dicomweb.responses import HTTPError
from storage.access_labels import labels_of, set_labels, study_exists
from storage.api_keys import ApiKeyError, parse_labels

MAX_BODY = 64 * 1024


async def study_labels(request: Request) -> Response:
    study = uid_param(request, "study")
    engine = request.app.state.archive.index.engine
    if not await study_exists(engine, study):
        raise HTTPError(404, "no such study")
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
        await set_labels(engine, study, labels)
    return JSONResponse({"study": study, "labels": await labels_of(engine, study)})

