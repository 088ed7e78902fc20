"""Who is asking, and may they: OpenID Connect bearer tokens and API keys, checked before any handler runs.

- ``Authorization: Bearer <JWT>`` (RFC 6750), as OHIF sends it from its ``oidc`` configuration, verified with
  PyJWT against the issuer's keys (OIDC discovery -> ``jwks_uri``): signature (RSA, RSA-PSS, EC and EdDSA
  only: ``none`` and HMAC are refused, so a public key can never be used as an HMAC secret), ``iss``, ``aud``,
  ``exp`` and ``nbf`` with a small clock skew. The key set is cached; a token naming an unknown ``kid`` makes
  it fetched again (key rotation), at most once per ``oidc_jwks_refetch_seconds``, so a flood of forged tokens
  cannot hammer the issuer.
- API keys (storage/api_keys.py) as ``Authorization: Bearer dwk_...`` or ``X-API-Key: dwk_...``.
- ``?access_token=`` on GET and HEAD (RFC 6750 2.3): Cornerstone3D's range requests carry no Authorization
  header. It is removed from the query string before anything else sees it (handlers, the audit log); the
  access log never prints query strings.

Scopes come from the token's ``scope`` (a string) or ``scp`` (a list), or from a roles claim at a
configurable path (Keycloak: ``realm_access.roles``): read (QIDO, WADO, metadata, frames, rendered, layers),
write (STOW), delete (DELETE), admin (status, relabelling). A missing or bad credential gets 401 with
``WWW-Authenticate: Bearer error="invalid_token"``, a valid one without the scope 403 with
``error="insufficient_scope"``. Error bodies say what was wrong in fixed words: never a claim, never the
token.

Without an issuer and without active API keys the server is open (every scope) if ``allow_anonymous``;
``dicomweb serve`` sets that only on a loopback address or with ``--allow-anonymous``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb.responses import error_response, index_unreachable_response
from storage import INDEX_UNREACHABLE, Settings

log = logging.getLogger(__name__)

# Asymmetric algorithms only. HS* would let anyone who has the public key (everyone) sign tokens.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024
REALM = "dicomweb"


class AuthError(Exception):
    """A credential that is missing or cannot be accepted; str() is a fixed description, no token content."""


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys cannot be fetched."""


@dataclass(frozen=True)
class Principal:
    who: str  # the token's sub (or client id), "key:NAME" for an API key, "anonymous"
    method: str  # "oidc", "apikey" or "anonymous"
    scopes: frozenset[str]  # of read, write, delete, admin
    labels: frozenset[str] | None  # the access labels it may see; None: every study


ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"read", "write", "delete", "admin"}), None)


def visible_labels(scope: Scope) -> frozenset[str] | None:
    """The access labels of the studies this request's principal may see, None for all."""
    principal = principal_of(scope)
    return None if principal is None else principal.labels


def principal_of(scope: Scope) -> Principal | None:
    """The principal AuthMiddleware found for this request (None outside the DICOMweb root)."""
    state = scope.get("state") or {}
    found = state.get("principal")
    return found if isinstance(found, Principal) else None


# ---- OpenID Connect ---------------------------------------------------------------------------------


def _fetch_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


class OidcVerifier:
    def __init__(
        self, issuer: str, audience: str, *, leeway: int = 30, refetch_seconds: float = 30.0
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.leeway = leeway
        self.refetch_seconds = refetch_seconds
        self.jwks_uri: str | None = None
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetches = 0  # JWKS fetches so far (the tests count them)
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Fetch the key set (and, the first time, the discovery document), unless that was done less than
        refetch_seconds ago."""
        async with self._lock:
            now = time.monotonic()
            if self._fetched_at is not None and now - self._fetched_at < self.refetch_seconds:
                return
            self._fetched_at = now
            try:
                if self.jwks_uri is None:
                    doc = await asyncio.to_thread(
                        _fetch_json, f"{self.issuer}/.well-known/openid-configuration"
                    )
                    if not isinstance(doc, dict) or doc.get("issuer", "").rstrip("/") != self.issuer:
                        raise ValueError("the discovery document names another issuer")
                    if not isinstance(doc.get("jwks_uri"), str):
                        raise ValueError("the discovery document has no jwks_uri")
                    self.jwks_uri = doc["jwks_uri"]
                self.fetches += 1
                jwks = await asyncio.to_thread(_fetch_json, self.jwks_uri)
            except (OSError, ValueError) as exc:
                log.warning("cannot fetch the OpenID Connect keys of %s: %s", self.issuer, exc)
                raise IssuerUnavailable(str(exc)) from None
            keys: dict[str | None, jwt.PyJWK] = {}
            for item in jwks.get("keys", []) if isinstance(jwks, dict) else []:
                if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                    continue
                try:
                    keys[item.get("kid")] = jwt.PyJWK(item)
                except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                    continue  # a key of a kind this server does not use (oct, an unknown curve)
            self.keys = keys

    async def _key(self, kid: Any, alg: str) -> jwt.PyJWK:
        if not self.keys:
            await self.refresh()
        key = self._pick(kid)
        if key is None:
            try:
                await self.refresh()  # key rotation; a no-op if done a moment ago
            except IssuerUnavailable:
                raise AuthError("token signed by an unknown key") from None
            key = self._pick(kid)
        if key is None:
            raise AuthError("token signed by an unknown key")
        if KEY_TYPES.get(alg[:2]) != key.key_type:
            raise AuthError("token algorithm does not match its key")
        return key

    def _pick(self, kid: Any) -> jwt.PyJWK | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid) if isinstance(kid, str) else None

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises AuthError, or IssuerUnavailable when no key was ever fetched."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError("token algorithm not allowed")
        key = await self._key(header.get("kid"), alg)
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token issued for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token from another issuer") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("token lacks a required claim (exp, iss or aud)") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("invalid token") from None


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split(".") if path else []:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def token_principal(claims: dict[str, Any], settings: Settings) -> Principal:
    names = {
        settings.scope_read: "read",
        settings.scope_write: "write",
        settings.scope_delete: "delete",
        settings.scope_admin: "admin",
    }
    granted = (
        _words(claims.get("scope"))
        + _words(claims.get("scp"))
        + _words(_claim(claims, settings.oidc_roles_claim))
    )
    scopes = frozenset(names[g] for g in granted if g in names)
    labels_claim = _claim(claims, settings.oidc_labels_claim) if settings.oidc_labels_claim else None
    labels = frozenset(_words(labels_claim)) if labels_claim is not None else None
    who = claims.get("sub") or claims.get("azp") or claims.get("client_id") or "unknown"
    return Principal(str(who)[:200], "oidc", scopes, labels)


# ---- what each route needs -------------------------------------------------------------------------


def required_scope(method: str, path: str) -> str:
    """The scope a request under the DICOMweb root needs; `path` is relative to the root."""
    parts = [p for p in path.split("/") if p]
    if parts[-1:] == ["labels"]:
        return "admin"
    if method == "DELETE":
        return "delete"
    if method == "POST":
        return "write"
    if parts[:1] in (["status"], ["stats"]):
        return "admin"
    if parts[:1] == ["lifecycle"] or (parts[:1] == ["studies"] and parts[2:] == ["qa"]):
        return "admin"
    return "read"


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    found = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                found = credential.strip()
        elif name == b"x-api-key" and found is None and value.strip():
            found = value.decode("latin-1").strip()
    return found


def _take_query_token(scope: Scope) -> tuple[str | None, bytes]:
    """The access_token query parameter, and the query string without it."""
    raw: bytes = scope.get("query_string", b"")
    if b"access_token" not in raw:
        return None, raw
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    token = next((v for k, v in pairs if k == "access_token"), None)
    rest = urlencode([(k, v) for k, v in pairs if k != "access_token"], encoding="latin-1")
    return token, rest.encode("latin-1")


def challenge(error: str, description: str, scope_name: str | None = None) -> str:
    value = f'Bearer realm="{REALM}", error="{error}", error_description="{description}"'
    return value + (f', scope="{scope_name}"' if scope_name else "")


async def _unreachable(scope: Scope, receive: Receive, send: Send, exc: BaseException) -> None:
    log.warning("the index is unreachable on %s %s: %s", scope["method"], scope["path"], type(exc).__name__)
    await index_unreachable_response()(scope, receive, send)


class AuthMiddleware:
    """Pure ASGI: decides before routing, so a refused request never reaches a handler or reads its body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.root = settings.root.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == self.root or path.startswith(self.root + "/")):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        query_token, query = _take_query_token(scope)
        scope = {**scope, "query_string": query}
        credential = _bearer(scope["headers"])
        if credential is None and method in ("GET", "HEAD"):
            credential = query_token
        need = required_scope(method, path[len(self.root) :])
        try:
            principal = await self._principal(scope, credential)
        except AuthError as exc:
            response = error_response(401, f"authentication required: {exc}")
            response.headers["WWW-Authenticate"] = challenge("invalid_token", str(exc))
            await response(scope, receive, send)
            return
        except IssuerUnavailable:
            await error_response(503, "the identity provider's keys cannot be fetched")(scope, receive, send)
            return
        except INDEX_UNREACHABLE as exc:  # API keys live in the index: outside the app's own handlers here
            await _unreachable(scope, receive, send, exc)
            return
        if principal is None:  # OPTIONS without credentials: let CORS and routing answer
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if need not in principal.scopes:
            scope_name = getattr(self.settings, f"scope_{need}")
            response = error_response(403, f"this request needs the scope {scope_name}")
            response.headers["WWW-Authenticate"] = challenge(
                "insufficient_scope", f"this request needs the scope {scope_name}", scope_name
            )
            await response(scope, receive, send)
            return
        if principal.labels is not None:
            await self._labelled(scope, receive, send, principal.labels)
            return
        await self.app(scope, receive, send)

    async def _labelled(self, scope: Scope, receive: Receive, send: Send, labels: frozenset[str]) -> None:
        """A principal restricted to studies with some of `labels`: a study it may not see does not exist for
        it (404, never 403), and the studies it stores get its labels before the answer is sent."""
        archive = scope["app"].state.archive
        parts = [p for p in scope["path"][len(self.root) :].split("/") if p]
        named = parts[1] if len(parts) > 1 and parts[0] == "studies" else None
        try:
            hidden = named is not None and await archive.study_hidden(named, labels)
        except INDEX_UNREACHABLE as exc:
            await _unreachable(scope, receive, send, exc)
            return
        if hidden:
            await error_response(404, "no such study")(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def holding_send(message: Message) -> None:
            held.append(message)

        try:
            await self.app(scope, receive, holding_send)
        finally:
            start = next((m for m in held if m["type"] == "http.response.start"), None)
            if start is not None and start["status"] < 300:
                from dicomweb.audit import uids_from_stow

                encoding = next(
                    (
                        v.decode("latin-1")
                        for k, v in start.get("headers", [])
                        if k.lower() == b"content-encoding"
                    ),
                    "",
                )
                body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
                studies, _ = uids_from_stow(body, encoding)
                await archive.add_study_labels(studies, labels)
            for message in held:
                await send(message)

    async def _principal(self, scope: Scope, credential: str | None) -> Principal | None:
        app_state = scope["app"].state
        keys = getattr(app_state, "api_keys", None)
        oidc: OidcVerifier | None = getattr(app_state, "oidc", None)
        if oidc is None and (keys is None or not await keys.any_active()):
            if self.settings.allow_anonymous:
                return ANONYMOUS
            raise AuthError("no authentication is configured and anonymous access is off")
        if credential is None:
            if scope["method"] == "OPTIONS":
                return None
            raise AuthError("no access token")
        if oidc is not None and credential.count(".") == 2:
            return token_principal(await oidc.verify(credential), self.settings)
        key = await keys.lookup(credential) if keys is not None else None
        if key is None:
            raise AuthError("unknown or revoked key" if credential.startswith("dwk_") else "invalid token")
        return Principal(f"key:{key.name}", "apikey", key.scopes, key.labels or None)
