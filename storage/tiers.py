"""Storage tiers: the blob store (hot) and a second, cheaper one (cold, DICOMWEB_COLD_BLOB_URL), seen as one.

A blob's key says its tier: keys of the cold tier are ``cold/`` + the key the blob had in the hot tier
(hot keys begin with two hex digits, see storage.blobs.new_blob_key, so the two never meet). The index
row names the key, so every reader of the archive (frames, bulk data, stored bytes, transcoding,
rendering, the master queue, verify) reads a moved blob from the cold store unchanged, and every cache
keyed by blob key (decoded frames, HTJ2K, the series metadata version, the preview count, ETags) sees
a new key, never a stale entry.

A reader that read an index row just before its study moved may ask the hot store for a blob the move
has just deleted: the cold copy is at a key known from the hot one, so a read of a hot key that finds
nothing is answered from ``cold/`` + key when that exists (the move deletes a hot blob only after the
cold copy is durable and the row points at it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from storage.blobs import BlobStore, BlobStoreUnavailable

COLD_PREFIX = "cold/"
HOT, COLD = "hot", "cold"


def cold_key(key: str) -> str:
    """The key a hot blob gets when it moves to the cold tier."""
    return COLD_PREFIX + key


def hot_key(key: str) -> str:
    """The key a blob had (or has) in the hot tier."""
    return key.removeprefix(COLD_PREFIX)


def tier_of(key: str) -> str:
    return COLD if key.startswith(COLD_PREFIX) else HOT


async def _close(source: AsyncIterator[bytes]) -> None:
    """Close a blob store's chunk generator (its open file or read-ahead request) now."""
    if (aclose := getattr(source, "aclose", None)) is not None:
        await aclose()


class TieredBlobStore:
    """A BlobStore routing each key to the hot or the cold store by its prefix."""

    def __init__(self, hot: BlobStore, cold: BlobStore) -> None:
        if hot.label == cold.label:
            # A move would copy each blob onto itself and then delete it.
            raise BlobStoreUnavailable(f"the cold blob store is the blob store itself ({hot.label})")
        self.hot = hot
        self.cold = cold
        self.label = hot.label
        self.cold_label = cold.label

    def _route(self, key: str) -> tuple[BlobStore, str]:
        if key.startswith(COLD_PREFIX):
            return self.cold, hot_key(key)
        return self.hot, key

    # ---- writes ----------------------------------------------------------------------------------

    async def put_file(self, key: str, src: Path) -> int:
        store, inner = self._route(key)
        return await store.put_file(inner, src)

    async def put_files(self, items: list[tuple[str, Path]]) -> list[int | BaseException]:
        hot = [(i, key, src) for i, (key, src) in enumerate(items) if tier_of(key) == HOT]
        cold = [(i, hot_key(key), src) for i, (key, src) in enumerate(items) if tier_of(key) == COLD]
        results: list[int | BaseException] = [0] * len(items)
        outcomes = await asyncio.gather(
            self.hot.put_files([(k, s) for _, k, s in hot]),
            self.cold.put_files([(k, s) for _, k, s in cold]),
        )
        for group, done in zip((hot, cold), outcomes, strict=True):
            for (i, _, _), result in zip(group, done, strict=True):
                results[i] = result
        return results

    async def delete(self, key: str) -> None:
        store, inner = self._route(key)
        await store.delete(inner)

    # ---- reads -----------------------------------------------------------------------------------

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        store, inner = self._route(key)
        try:
            return await store.read(inner, offset, length)
        except FileNotFoundError:
            if store is self.cold:
                raise
        return await self.cold.read(key, offset, length)  # moved since the caller read its row

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        store, inner = self._route(key)
        source = store.chunks(inner)
        try:
            first = await anext(source, None)
        except FileNotFoundError:
            if store is self.cold:
                raise
            await _close(source)
            source = self.cold.chunks(key)  # moved since the caller read its row
            first = await anext(source, None)
        try:
            if first is not None:
                yield first
            async for piece in source:
                yield piece
        finally:
            await _close(source)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        store, inner = self._route(key)
        async with contextlib.AsyncExitStack() as stack:
            try:
                path = await stack.enter_async_context(store.local_file(inner))
            except FileNotFoundError:
                if store is self.cold:
                    raise
                path = await stack.enter_async_context(self.cold.local_file(key))
            yield path

    # ---- health ----------------------------------------------------------------------------------

    async def check(self, *, write: bool = False) -> None:
        await self.hot.check(write=write)
        try:
            await self.cold.check(write=write)
        except BlobStoreUnavailable as exc:
            raise BlobStoreUnavailable(f"cold tier: {exc}") from None

    async def close(self) -> None:
        await self.hot.close()
        await self.cold.close()
