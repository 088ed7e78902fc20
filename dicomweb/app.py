"""The Starlette application: routes, error handling, CORS, start-up and shut-down."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from dicomweb import frames, progressive, qido, rendered, stow, wado
from dicomweb.access_log import AccessLogMiddleware
from dicomweb.responses import HTTPError, error_response
from dicomweb.static_sites import static_routes
from storage.archive import Archive
from storage.config import Settings, settings_from_env
from storage.readahead import readahead

log = logging.getLogger(__name__)

ST = "/studies/{study}"
SE = ST + "/series/{series}"
IN = SE + "/instances/{sop}"


def dicomweb_routes() -> list[Route]:
    return [
        Route("/status", status, methods=["GET"]),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/studies", qido.studies, methods=["GET"]),
        Route("/series", qido.series, methods=["GET"]),
        Route("/instances", qido.instances, methods=["GET"]),
        Route(ST, stow.store, methods=["POST"]),
        Route(ST, wado.retrieve, methods=["GET"]),
        Route(ST, wado.delete, methods=["DELETE"]),
        Route(ST + "/metadata", wado.metadata, methods=["GET"]),
        Route(ST + "/series", qido.series, methods=["GET"]),
        Route(ST + "/instances", qido.instances, methods=["GET"]),
        Route(SE, wado.retrieve, methods=["GET"]),
        Route(SE, wado.delete, methods=["DELETE"]),
        Route(SE + "/metadata", wado.metadata, methods=["GET"]),
        Route(SE + "/instances", qido.instances, methods=["GET"]),
        Route(SE + "/layers", progressive.series_layers, methods=["GET"]),
        Route(IN, wado.retrieve, methods=["GET"]),
        Route(IN, wado.delete, methods=["DELETE"]),
        Route(IN + "/metadata", wado.metadata, methods=["GET"]),
        Route(IN + "/frames/{frames}", frames.frames, methods=["GET"]),
        Route(IN + "/layers", progressive.layers, methods=["GET"]),
        Route(IN + "/bulkdata/{tagpath:path}", wado.bulkdata, methods=["GET"]),
        Route(ST + "/rendered", rendered.rendered, methods=["GET"]),
        Route(SE + "/rendered", rendered.rendered, methods=["GET"]),
        Route(IN + "/rendered", rendered.rendered, methods=["GET"]),
        Route(IN + "/frames/{frames}/rendered", rendered.rendered, methods=["GET"]),
        Route(ST + "/thumbnail", rendered.thumbnail, methods=["GET"]),
        Route(SE + "/thumbnail", rendered.thumbnail, methods=["GET"]),
        Route(IN + "/thumbnail", rendered.thumbnail, methods=["GET"]),
        Route(IN + "/frames/{frames}/thumbnail", rendered.thumbnail, methods=["GET"]),
    ]


async def healthz(request: Request) -> Response:
    await request.app.state.archive.index.count_instances()
    return PlainTextResponse("ok")


async def status(request: Request) -> Response:
    """Archive state: how many instances, how many still wait for a master, and how many are kept as
    received (no master), with how many for each reason."""
    index = request.app.state.archive.index
    jobs = await index.job_counts()
    return JSONResponse({
        "instances": await index.count_instances(),
        "pending_masters": jobs.get("pending", 0),
        "kept_as_received": jobs.get("kept", 0),
        "kept_as_received_reasons": await index.kept_reasons(),
        "masters_in_progress": request.app.state.archive.masters.busy,
        "frames_decoded_ahead": readahead(request.app.state.archive).decoded,
        "masters_with_uncompressed_frames_kept": readahead(request.app.state.archive).spilled,
    })


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc.status, exc.reason)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


async def not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return error_response(status, getattr(exc, "detail", "not found") or "not found")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or settings_from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        archive = Archive(settings)
        archive.clear_tmp()
        await archive.open()
        app.state.archive = archive
        try:
            yield
        finally:
            await archive.close()

    # First, so it logs every answer (CORS preflights included); an unhandled error is logged as 500.
    middleware = [Middleware(AccessLogMiddleware)] if settings.access_log else []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Accept", "Authorization", "Content-Type", "Range", "If-None-Match"],
                expose_headers=["Content-Range", "Content-Length", "ETag", "Warning"],
            )
        )
    app = Starlette(
        routes=[Route("/healthz", healthz), Mount(settings.root, routes=dicomweb_routes()), *static_routes(settings)],
        middleware=middleware,
        exception_handlers={HTTPError: http_error, 404: not_found, 405: not_found, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
