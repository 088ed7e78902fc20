"""Access control, audit log and limits put together: the middleware list and what the lifespan opens.

Order, outermost first: audit (so refused attempts are audited too), authentication, limits (an
unauthenticated client gets 401, never an upload slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from dicomweb.audit import AuditLog, AuditMiddleware
from dicomweb.auth import AuthMiddleware, IssuerUnavailable, OidcVerifier
from dicomweb.limits import LimitsMiddleware
from storage import Archive, Settings

log = logging.getLogger(__name__)


def security_middleware(settings: Settings) -> list[Middleware]:
    return [
        Middleware(AuditMiddleware, root=settings.root),
        Middleware(AuthMiddleware, settings=settings),
        Middleware(
            LimitsMiddleware,
            root=settings.root,
            body_timeout=settings.body_timeout,
            max_uploads_per_client=settings.max_uploads_per_client,
        ),
    ]


@contextlib.asynccontextmanager
async def security_state(app: Starlette, settings: Settings, archive: Archive) -> AsyncIterator[None]:
    """API keys (their table in the index database), the OIDC verifier (keys fetched now when the issuer
    answers, else at the first token) and the audit log, reopened on SIGHUP."""
    app.state.api_keys = archive.api_keys
    app.state.oidc = None
    if settings.oidc_issuer:
        oidc = OidcVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            leeway=settings.oidc_leeway,
            refetch_seconds=settings.oidc_jwks_refetch_seconds,
        )
        with contextlib.suppress(IssuerUnavailable):
            await oidc.refresh()
        app.state.oidc = oidc
    audit = AuditLog(settings.audit_log) if settings.audit_log else None
    app.state.audit = audit
    hup = False
    if audit is not None:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, audit.reopen)
            hup = True
    try:
        yield
    finally:
        if audit is not None:
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            audit.close()
