"""Validating path parameters."""

from __future__ import annotations

from starlette.requests import Request

from dicomweb.responses import HTTPError
from storage import is_valid_uid


def uid_param(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not is_valid_uid(value):
        raise HTTPError(400, f"malformed UID in the URL: {value[:80]!r}")
    return value


def uids(request: Request) -> tuple[str, str | None, str | None]:
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in request.path_params else None
    sop = uid_param(request, "sop") if "sop" in request.path_params else None
    return study, series, sop


def instance_uids(request: Request) -> tuple[str, str, str]:
    """The UIDs of a route under /studies/{study}/series/{series}/instances/{sop}."""
    return uid_param(request, "study"), uid_param(request, "series"), uid_param(request, "sop")
