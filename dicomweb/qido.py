"""QIDO-RS: search for studies, series and instances (PS3.18 10.6)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.auth import visible_studies
from dicomweb.params import uids
from dicomweb.responses import HTTPError, check_json_accept, dicom_json
from storage.query import Filter, Level, Query, QueryError, parse_query, run_query


async def _search(request: Request, level: Level) -> Response:
    check_json_accept(request)
    study = series = None
    if "study" in request.path_params:
        study, series, _ = uids(request)
    params = [(k, v) for k, v in request.query_params.multi_items() if k.lower() != "accept"]
    try:
        query = parse_query(level, params, study, series)
    except QueryError as exc:
        raise HTTPError(400, str(exc)) from None
    visible = visible_studies(request.scope)  # access labels: a token sees only its studies
    results, remaining = await run_query(request.app.state.archive.index, query, visible_studies=visible)
    headers = {}
    if remaining > 0:
        # PS3.18 8.3.4.4: say that results were cut, and how to get the rest.
        headers["Warning"] = (
            f'299 dicomweb "There are {remaining} additional results that can be requested '
            f'with offset={query.offset + len(results)}"'
        )
    if not results and study and level != "study":
        # Searching inside a study or series that does not exist: say so rather than "no match".
        found, _ = await run_query(request.app.state.archive.index, _scope_probe(study, series),
                                   visible_studies=visible)
        if not found:
            raise HTTPError(404, f"no such {'series' if series else 'study'}")
    return dicom_json(request, orjson.dumps(results), headers=headers)


def _scope_probe(study: str, series: str | None) -> Query:
    q = Query(level="series" if series else "study", limit=1)
    q.filters.append(Filter(0x0020000D, study))
    if series:
        q.filters.append(Filter(0x0020000E, series))
    return q


async def studies(request: Request) -> Response:
    return await _search(request, "study")


async def series(request: Request) -> Response:
    return await _search(request, "series")


async def instances(request: Request) -> Response:
    return await _search(request, "instance")
