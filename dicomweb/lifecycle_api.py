"""Storage lifecycle over HTTP (admin scope): the dry run of the configured policy, the QA of lossy
derivations, and the 301 that sends a request for an original to the derived instance that replaced it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb.params import uid_param
from dicomweb.responses import HTTPError, archive_of
from storage import PolicyError, load_policy

QA_LIMIT_DEFAULT = 20
QA_LIMIT_MAX = 1000


async def lifecycle(request: Request) -> Response:
    """GET {root}/lifecycle: per rule of DICOMWEB_LIFECYCLE, what it would do now (never 404: without a
    policy, no rules). The file is read on each request, so an edited policy shows at once."""
    archive = archive_of(request)
    path = archive.settings.lifecycle_policy
    try:
        policy = load_policy(path) if path else None
    except PolicyError as exc:
        raise HTTPError(503, f"the lifecycle policy cannot be used: {exc}") from None
    return JSONResponse(await archive.lifecycle_summary(policy), headers={"Cache-Control": "no-store"})


async def lifecycle_qa(request: Request) -> Response:
    """GET {root}/lifecycle/qa?limit=N: the most recent lossy derivations, one entry per study."""
    text = request.query_params.get("limit", str(QA_LIMIT_DEFAULT))
    if not text.isdigit() or not 1 <= int(text) <= QA_LIMIT_MAX:
        raise HTTPError(400, f"limit must be a whole number from 1 to {QA_LIMIT_MAX}")
    studies = await archive_of(request).recent_qa(int(text))
    return JSONResponse({"studies": studies}, headers={"Cache-Control": "no-store"})


async def study_qa(request: Request) -> Response:
    """GET {root}/studies/{study}/qa: per derived frame of the study, PSNR, maximum error and SSIM
    against the original, measured before the original was deleted."""
    study = uid_param(request, "study")
    frames = await archive_of(request).study_qa(study)
    return JSONResponse({"study": study, "frames": frames}, headers={"Cache-Control": "no-store"})


async def moved(request: Request) -> Response | None:
    """For a request naming an instance that does not exist: a 301 to the same resource of the derived
    instance that took its place (same study and series), the query string kept; else None."""
    sop = request.path_params.get("sop")
    study = request.path_params.get("study")
    series = request.path_params.get("series")
    if not sop or not study or not series:
        return None
    found = await archive_of(request).successor(sop)
    if found is None or found[:2] != (study, series):
        return None
    marker = f"/instances/{sop}"
    path = request.url.path
    at = path.rfind(marker)
    if at < 0:
        return None
    location = path[:at] + f"/instances/{found[2]}" + path[at + len(marker) :]
    if request.url.query:
        location += "?" + request.url.query
    return Response(status_code=301, headers={"Location": location, "Cache-Control": "no-cache"})
