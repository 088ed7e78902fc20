"""API keys for gateways and scripts that cannot do OpenID Connect: stored in the index database, only as
hashes.

A key is ``dwk_`` and 43 characters of `secrets.token_urlsafe(32)` (256 random bits). The table holds its
SHA-256, never the key: with that much entropy a fast hash cannot be brute-forced, so a slow password hash
(bcrypt, argon2) would only cost time on every request. Looking a key up by its hash also keeps the
comparison out of Python, so its timing says nothing about the key.

Scopes are stored as the abstract names read, write, delete and admin (the names tokens carry are
configurable; a key keeps working when they change). Labels, when a key has some, are the access labels it
may see and the ones a study it stores receives.

The table is ``api_keys`` of storage/schema.py (migration 0007).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.index import Index
from storage.schema import api_keys

SCOPES = ("read", "write", "delete", "admin")
PREFIX = "dwk_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
CACHE_SECONDS = 5.0  # how long a lookup (or a revocation) may take to be seen by a running server


class ApiKeyError(ValueError):
    """A name, scope or label that cannot be used, or a name already taken; str() says which."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    labels: frozenset[str]  # empty: the key may see every study its scopes allow
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    """`read,write` (or dicomweb.read ...) -> {"read", "write"}; raises ApiKeyError."""
    scopes = set()
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        short = word.lower().removeprefix("dicomweb.")
        if short not in SCOPES:
            raise ApiKeyError(f"unknown scope {word!r}: use {', '.join(SCOPES)}")
        scopes.add(short)
    if not scopes:
        raise ApiKeyError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return frozenset(scopes)


def parse_labels(text: str) -> frozenset[str]:
    labels = frozenset(w for w in re.split(r"[\s,]+", text.strip()) if w)
    for label in labels:
        if not LABEL.fullmatch(label):
            raise ApiKeyError(f"malformed label {label!r}: letters, digits and . _ : - (at most 64)")
    return labels


def _from_row(row) -> ApiKey:
    return ApiKey(
        row.name, frozenset(row.scopes.split()), frozenset(row.labels.split()), row.created_at, row.revoked_at
    )


class ApiKeys:
    """The keys in one index database, with a short cache so a request costs no query most of the time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lookups: dict[str, tuple[float, ApiKey | None]] = {}
        self._any: tuple[float, bool] | None = None

    async def create(self, name: str, scopes: frozenset[str], labels: frozenset[str] = frozenset()) -> str:
        """A new key named `name`; returns the key (shown once, never stored)."""
        if not NAME.fullmatch(name):
            raise ApiKeyError(f"malformed key name {name!r}: letters, digits and . _ @ - (at most 128)")
        key = PREFIX + secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            old = (await conn.execute(select(api_keys.c.revoked_at).where(api_keys.c.name == name))).first()
            if old is not None and old.revoked_at is None:
                raise ApiKeyError(f"a key named {name!r} exists: revoke it first")
            if old is not None:  # a revoked key's name can be given to a new key
                await conn.execute(delete(api_keys).where(api_keys.c.name == name))
            await conn.execute(
                insert(api_keys).values(
                    name=name,
                    key_sha256=key_hash(key),
                    scopes=" ".join(sorted(scopes)),
                    labels=" ".join(sorted(labels)),
                    created_at=time.time(),
                    revoked_at=None,
                )
            )
        self._forget()
        return key

    async def list(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.name))).all()
        return [_from_row(r) for r in rows]

    async def revoke(self, name: str) -> bool:
        """True when an active key of that name was revoked."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        self._forget()
        return bool(result.rowcount)

    async def relabel(self, name: str, labels: frozenset[str]) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.name == name).values(labels=" ".join(sorted(labels)))
            )
        self._forget()
        return bool(result.rowcount)

    def _forget(self) -> None:
        self._lookups.clear()
        self._any = None

    async def lookup(self, key: str) -> ApiKey | None:
        """The active key `key` is, or None."""
        if not key.startswith(PREFIX) or len(key) > 100:
            return None
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._lookups.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys).where(api_keys.c.key_sha256 == digest, api_keys.c.revoked_at.is_(None))
                )
            ).first()
        found = _from_row(row) if row is not None else None
        if len(self._lookups) > 10_000:  # a flood of made-up keys must not grow memory
            self._lookups.clear()
        self._lookups[digest] = (now, found)
        return found

    async def any_active(self) -> bool:
        """Whether at least one key is active (then requests need credentials)."""
        now = time.monotonic()
        if self._any is not None and now - self._any[0] < CACHE_SECONDS:
            return self._any[1]
        async with self.engine.connect() as conn:
            n = (
                await conn.execute(
                    select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
                )
            ).scalar_one()
        self._any = (now, bool(n))
        return bool(n)


@contextlib.asynccontextmanager
async def open_api_keys(database_url: str) -> AsyncIterator[ApiKeys]:
    """The keys of the index at `database_url`, without opening an archive (the apikey commands)."""
    index = Index(database_url)
    try:
        await index.create()  # the migrations: a new archive gets its tables
        yield ApiKeys(index.engine)
    finally:
        await index.close()
