"""Decode-ahead of a series for clients that want uncompressed frames.

A master frame is a JPEG 2000 codestream; a client that asks for uncompressed frames (dicomweb-client's
default, research tools, OHIF set to application/octet-stream) otherwise waits for one decode per frame,
in the order it asks. When a series is opened (its metadata, or an uncompressed frame of it, is asked for),
this decodes the series' frames ahead of the client, from the frame asked for onwards, into the archive's
memory cache of decoded frames (the one `Archive.native_frame` reads first), so they are ready when asked.

- Low priority: one worker thread, decoding one frame at a time on one core, at the lowest CPU priority
  (nice 19), so requests being answered come first. A client that asks for the very frame the worker is
  decoding waits for that decode, and the worker runs at normal priority until it is done (where the
  process may raise a thread's priority; elsewhere the client decodes the frame itself, as without
  decode-ahead).
- Bounded memory: what it decodes goes into the bounded LRU cache of decoded frames
  (DICOMWEB_DECODED_CACHE_MB), and it decodes ahead at most three quarters of that cache, so what clients are reading
  is not evicted by what they may read next; least recently used frames are dropped first.
- One series at a time: opening another series stops the previous decode-ahead.

Keys are (blob key, frame number): a blob key names one stored version, so a replaced instance or a new
master is never served from an older decode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.codec import decode
from storage.index import InstanceRecord
from storage.masters import container_dtype

log = logging.getLogger(__name__)

NICE = 19


_worker_thread: dict[str, int] = {}


def _set_priority(tid: int, nice: int) -> bool:
    """Set a thread's nice value (Linux: each thread has its own); False where not permitted."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        return False
    return True


def _decode_frame(codestream: bytes, bits_allocated: int, signed: bool) -> bytes:
    _worker_thread["tid"] = tid = threading.get_native_id()
    _set_priority(tid, NICE)  # back to the lowest priority, if a waiting client had raised it
    pixels = decode(codestream, threads=1)
    return pixels.astype(container_dtype(bits_allocated, signed), copy=False).tobytes()


def decodable(rec: InstanceRecord) -> bool:
    return rec.is_master and rec.bits_allocated in (8, 16)


class Readahead:
    """The decode-ahead of one archive (see the module's docstring)."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="readahead")
        self._inflight: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._series: tuple[str, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.decoded = 0  # frames decoded ahead so far (for tests and benchmarks)

    @property
    def _cache(self) -> Any:
        return self.archive._decoded  # the archive's ByteLRU of decoded frames, read by native_frame

    def open_series(self, study: str, series: str, start: InstanceRecord | None = None, number: int = 1) -> None:
        """Start decoding `series` ahead (from frame `number` of `start`, else from its first instance),
        unless it is being decoded ahead already, or was, and that frame is in the cache."""
        if self._series == (study, series) and self._task is not None:
            if not self._task.done():
                return
            if start is None or not decodable(start) or self._cache.get((start.blob_key, number)) is not None:
                return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._series = (study, series)
        start_sop = start.sop_uid if start is not None else None
        self._task = asyncio.get_running_loop().create_task(self._run(study, series, start_sop))

    async def waiting(self, rec: InstanceRecord, number: int) -> bytes | None:
        """The frame, if the worker is decoding it right now and can be raised to normal priority to finish
        it (rather than decode it twice); None: decode it yourself."""
        future = self._inflight.get((rec.blob_key, number))
        if future is None or "tid" not in _worker_thread or not _set_priority(_worker_thread["tid"], 0):
            return None
        try:
            return await asyncio.shield(future)
        except Exception:  # noqa: BLE001 - the caller decodes it itself and reports what goes wrong
            return None

    async def _run(self, study: str, series: str, start_sop: str | None) -> None:
        try:
            recs = [r for r in await self.archive.index.instances(study, series) if decodable(r)]
            start = next((i for i, r in enumerate(recs) if r.sop_uid == start_sop), 0)
            budget = self._cache.capacity * 3 // 4
            loop = asyncio.get_running_loop()
            for rec in recs[start:] + recs[:start]:
                for number in range(1, rec.number_of_frames + 1):
                    key = (rec.blob_key, number)
                    if self._cache.get(key) is not None or key in self._inflight:
                        continue
                    codestream = await self.archive.read_frame(rec, number)
                    future = loop.run_in_executor(self._pool, _decode_frame, codestream, rec.bits_allocated,
                                                  rec.pixel_representation == 1)
                    self._inflight[key] = future
                    try:
                        data = await asyncio.shield(future)
                    finally:
                        self._inflight.pop(key, None)
                    self._cache.put(key, data)
                    self.decoded += 1
                    budget -= len(data)
                    if budget <= 0:
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            # Decoding ahead is a courtesy: a failure here is answered when the frame itself is asked for.
            log.exception("decode-ahead of series %s stopped", series)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


_readaheads: weakref.WeakKeyDictionary[Any, Readahead] = weakref.WeakKeyDictionary()


def readahead(archive: Any) -> Readahead:
    """The archive's decode-ahead (made on first use)."""
    found = _readaheads.get(archive)
    if found is None:
        found = _readaheads[archive] = Readahead(archive)
    return found
