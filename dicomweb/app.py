"""The Starlette application: routes, error handling, CORS, start-up and shut-down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from dicomweb import frames, labels_api, lifecycle_api, progressive, qido, rendered, stats_api, stow, wado
from dicomweb.access_log import AccessLogMiddleware
from dicomweb.audit import lifecycle_record
from dicomweb.responses import HTTPError, archive_of, error_response, index_unreachable_response
from dicomweb.security import security_middleware, security_state
from dicomweb.static_sites import static_routes
from storage import (
    INDEX_UNREACHABLE,
    Archive,
    BadRequest,
    CannotProduce,
    NotFound,
    NotReady,
    Settings,
    StorageError,
    run_on_schedule,
    settings_from_env,
)

log = logging.getLogger(__name__)

ST = "/studies/{study}"
SE = ST + "/series/{series}"
IN = SE + "/instances/{sop}"


def dicomweb_routes() -> list[Route]:
    return [
        Route("/status", status, methods=["GET"]),
        Route("/stats", stats_api.stats, methods=["GET"]),
        Route("/lifecycle", lifecycle_api.lifecycle, methods=["GET"]),
        Route("/lifecycle/qa", lifecycle_api.lifecycle_qa, methods=["GET"]),
        Route(ST + "/qa", lifecycle_api.study_qa, methods=["GET"]),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/studies", qido.studies, methods=["GET"]),
        Route("/series", qido.series, methods=["GET"]),
        Route("/instances", qido.instances, methods=["GET"]),
        Route(ST, stow.store, methods=["POST"]),
        Route(ST, wado.retrieve, methods=["GET"]),
        Route(ST, wado.delete, methods=["DELETE"]),
        Route(ST + "/metadata", wado.metadata, methods=["GET"]),
        Route(ST + "/labels", labels_api.study_labels, methods=["GET", "PUT"]),
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
    await archive_of(request).check_health()
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Readiness, for a load balancer: 200 when the index and the blob store both answer, else 503 with
    the reason (no Retry-After: the balancer polls). /healthz stays liveness: this process answers."""
    try:
        await archive_of(request).check_ready()
    except NotReady as exc:
        return PlainTextResponse(
            f"not ready: {exc}\n", status_code=503, headers={"Cache-Control": "no-store"}
        )
    return PlainTextResponse("ready\n", headers={"Cache-Control": "no-store"})


async def status(request: Request) -> Response:
    """Archive state: how many instances, how many still wait for a master, and how many are kept as
    received (no master), with how many for each reason."""
    return JSONResponse(await archive_of(request).status())


# Each kind of refusal from storage, and the status it gets: the one place they are mapped.
STATUS_OF: dict[type[StorageError], int] = {
    NotFound: 404,
    BadRequest: 400,
    CannotProduce: 406,
    NotReady: 503,
}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc.status, exc.reason)


async def storage_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFound) and (redirect := await lifecycle_api.moved(request)) is not None:
        # The instance was replaced by its lossy derived copy: any resource of it is found there.
        return redirect
    status = next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), 500)
    if status == 500:
        log.error("unmapped storage error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(status, str(exc))


async def index_unreachable(request: Request, exc: Exception) -> Response:
    log.warning("the index is unreachable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return index_unreachable_response()


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


async def not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return error_response(status, getattr(exc, "detail", "not found") or "not found")


def _audit_change(app: Starlette, change: dict) -> None:
    """A change the scheduled lifecycle made, in the audit log when there is one."""
    audit = getattr(app.state, "audit", None)
    if audit is not None:
        audit.write(lifecycle_record(change, who="lifecycle schedule"))


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or settings_from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        archive = Archive(settings)
        archive.clear_tmp()
        await archive.open()
        app.state.archive = archive
        schedule: asyncio.Task[None] | None = None
        try:
            async with security_state(app, settings, archive):
                if settings.lifecycle_policy and settings.lifecycle_interval > 0:
                    schedule = asyncio.create_task(
                        run_on_schedule(
                            archive,
                            settings.lifecycle_policy,
                            settings.lifecycle_interval,
                            on_change=lambda change: _audit_change(app, change),
                        )
                    )
                yield
        finally:
            if schedule is not None:
                schedule.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await schedule
            await archive.close()

    # First, so it logs every answer (CORS preflights included); an unhandled error is logged as 500.
    middleware = [Middleware(AccessLogMiddleware)] if settings.access_log else []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=[
                    "Accept",
                    "Authorization",
                    "Content-Type",
                    "Range",
                    "If-None-Match",
                    "X-API-Key",
                ],
                expose_headers=["Content-Range", "Content-Length", "ETag", "Warning"],
            )
        )
    # Audit (outside, so refusals are audited), then authentication, then limits, nearest to the handlers.
    middleware += security_middleware(settings)
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount(settings.root, routes=dicomweb_routes()),
            *static_routes(settings),
        ],
        middleware=middleware,
        exception_handlers={
            HTTPError: http_error,
            StorageError: storage_error,
            **dict.fromkeys(INDEX_UNREACHABLE, index_unreachable),
            404: not_found,
            405: not_found,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
