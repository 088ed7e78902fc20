"""What `dicomweb serve` checks and sets for a safe start: no open server on a network address unless asked,
TLS files, and uvicorn's timeouts.

With no OIDC issuer and no active API key the server would answer anyone. That is today's behaviour on a
loopback address (a workstation, a reverse proxy on the same host); on any other address the server refuses
to start (exit status 2) unless --allow-anonymous (or DICOMWEB_ALLOW_ANONYMOUS=1) says it is meant, as
Orthanc refuses remote access by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from dicomweb.limits import header_timeout_protocol
from storage import SettingError, Settings, open_api_keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


async def _active_keys(settings: Settings) -> bool:
    async with open_api_keys(settings.sql_url) as keys:
        return await keys.any_active()


def check_exposure(settings: Settings, host: str, allow_flag: bool) -> tuple[Settings, str]:
    """Settings with allow_anonymous decided, and what the banner says about access control; raises
    SettingError (exit 2) for an open server on a network address."""
    if settings.oidc_issuer and not settings.oidc_audience:
        raise SettingError(
            "DICOMWEB_OIDC_AUDIENCE must be set with DICOMWEB_OIDC_ISSUER "
            "(tokens are only accepted for this audience)"
        )
    anonymous = settings.allow_anonymous or allow_flag or is_loopback(host)
    keys = asyncio.run(_active_keys(settings))
    if not (settings.oidc_issuer or keys or anonymous):
        raise SettingError(
            f"refusing to serve patient data on {host} to anyone without authentication: set "
            "DICOMWEB_OIDC_ISSUER and DICOMWEB_OIDC_AUDIENCE, or create an API key (dicomweb apikey create "
            "NAME --scopes read,write), or pass --allow-anonymous (DICOMWEB_ALLOW_ANONYMOUS=1) "
            "if this is meant"
        )
    parts = []
    if settings.oidc_issuer:
        parts.append(f"OIDC tokens from {settings.oidc_issuer} (audience {settings.oidc_audience})")
    if keys:
        parts.append("API keys")
    if not parts:
        parts.append(
            "none, open to anyone who reaches " + ("this loopback address" if is_loopback(host) else host)
        )
    return settings.with_overrides(allow_anonymous=anonymous), ", ".join(parts)


def tls_files(cert: str | None, key: str | None, env: tuple[str, str]) -> tuple[str, str] | None:
    cert, key = cert or env[0], key or env[1]
    if bool(cert) != bool(key):
        raise SettingError("--tls-cert and --tls-key (DICOMWEB_TLS_CERT, DICOMWEB_TLS_KEY) go together")
    if not cert or not key:
        return None
    for name, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise SettingError(f"{name} {path}: no such file")
    return cert, key


def uvicorn_security(settings: Settings, tls: tuple[str, str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout_keep_alive": settings.keep_alive_timeout}
    protocol = header_timeout_protocol(settings.header_timeout)
    if protocol is not None:
        options["http"] = protocol
    if tls:
        options["ssl_certfile"], options["ssl_keyfile"] = tls
    return options
