"""Series metadata kept ready to send: the compressed body of a series' `/metadata`, validated on every
request against the series' version in the index, so it is right with several server processes (replicas)
sharing one database.

A series' version is the set of its instances' blob keys. Every stored version of an instance gets its own
blob key (a replacement, and the master that takes the place of a received file, get new ones; a deletion
removes one), and an instance's metadata JSON is only ever written together with a new key, so the keys
change whenever the series' metadata does, on whichever replica the change was made. Reading them is one
indexed query of short strings; reading the metadata is a few kilobytes per instance and compressing it
again (30 KB of gzip for a 300-instance CT series) is what a request used to cost.

A body built from rows read after the version was read is stored under that version: if the series changed
in between, the next request reads a newer version and builds again, so an older body is never sent for a
newer series.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from storage import schema

CAPACITY_BYTES = 64 << 20


async def series_version(engine: Any, study: str, series: str) -> str | None:
    """A digest of the series' instances' blob keys; None when the series has no instance."""
    inst = schema.instances
    q = select(inst.c.blob_key).where((inst.c.study_uid == study) & (inst.c.series_uid == series))
    async with engine.connect() as conn:
        keys = list((await conn.execute(q)).scalars())
    if not keys:
        return None
    return hashlib.sha1("\n".join(sorted(keys)).encode(), usedforsecurity=False).hexdigest()


class SeriesBodies:
    """Ready bodies per (study, series, variant), bounded in bytes, least recently used dropped first."""

    def __init__(self, capacity: int = CAPACITY_BYTES) -> None:
        self.capacity = capacity
        self.size = 0
        self.hits = self.builds = 0
        self._items: OrderedDict[tuple[str, str, str], tuple[str, bytes]] = OrderedDict()

    async def get(
        self, engine: Any, study: str, series: str, variant: str, build: Callable[[], Awaitable[bytes | None]]
    ) -> bytes | None:
        """The body for the series as it is now: the ready one if its version is current, else `build()`'s
        (None from build, or no such series: None)."""
        version = await series_version(engine, study, series)
        if version is None:
            return None
        key = (study, series, variant)
        ready = self._items.get(key)
        if ready is not None and ready[0] == version:
            self._items.move_to_end(key)
            self.hits += 1
            return ready[1]
        body = await build()
        if body is None:
            return None
        self.builds += 1
        self._put(key, version, body)
        return body

    def _put(self, key: tuple[str, str, str], version: str, body: bytes) -> None:
        if len(body) > self.capacity:
            return
        if (old := self._items.pop(key, None)) is not None:
            self.size -= len(old[1])
        self._items[key] = (version, body)
        self.size += len(body)
        while self.size > self.capacity:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size -= len(dropped)


bodies = SeriesBodies()
