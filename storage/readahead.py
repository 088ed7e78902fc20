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
  (DICOMWEB_DECODED_CACHE_MB), and it decodes ahead at most three quarters of that cache, so what clients are
  reading is not evicted by what they may read next; least recently used frames are dropped first.
- One series at a time: opening another series stops the previous decode-ahead.

Frames already uncompressed when received cost no decode at all: when the master of such an instance
replaces it, its frames are copied to a bounded disk cache (``DICOMWEB_DECODED_DISK_CACHE_MB``, 2 GiB;
oldest instances dropped first), read before anything is decoded. Decoding a 512x512 CT master takes
20-90 ms of a core on this machine; reading its 512 KB frame, well under one: a series read right after it
was stored is read at disk speed, as from a server that keeps uncompressed files.

Keys are (blob key, frame number): a blob key names one stored version, so a replaced instance or a new
master is never served from an older decode.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom

from storage.codec import decode
from storage.index import InstanceRecord
from storage.mastering.make import container_dtype
from storage.transfer_syntaxes import syntax

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


class DecodedSpill:
    """Uncompressed frames on disk, per blob key, bounded in bytes (oldest instances removed first)."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self._size: int | None = None  # measured on first write
        self._lock = threading.Lock()

    def _dir(self, blob_key: str) -> Path:
        tag = hashlib.sha1(blob_key.encode(), usedforsecurity=False).hexdigest()
        return self.root / tag[:2] / tag

    def has(self, blob_key: str, number: int) -> bool:
        return self.capacity > 0 and (self._dir(blob_key) / f"{number}.raw").is_file()

    def read(self, blob_key: str, number: int) -> bytes | None:
        if self.capacity <= 0:
            return None
        try:
            return (self._dir(blob_key) / f"{number}.raw").read_bytes()
        except OSError:
            return None

    def write(self, blob_key: str, frames: list[bytes]) -> None:
        total = sum(map(len, frames))
        if self.capacity <= 0 or total > self.capacity // 4:
            return
        folder = self._dir(blob_key)
        folder.mkdir(parents=True, exist_ok=True)
        for number, data in enumerate(frames, start=1):
            tmp = folder / f".{number}.{os.getpid()}.{time.time_ns()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{number}.raw")
        with self._lock:
            if self._size is None:
                self._size = sum(f.stat().st_size for f in self.root.rglob("*.raw"))
            else:
                self._size += total
            if self._size > self.capacity:
                self._evict()

    def _evict(self) -> None:
        """Remove the oldest instances' folders until a tenth of the capacity is free."""
        folders = sorted(
            (d.stat().st_mtime, d)
            for top in self.root.iterdir()
            if top.is_dir()
            for d in top.iterdir()
            if d.is_dir()
        )
        size = self._size or 0
        for _, folder in folders:
            if size <= self.capacity * 9 // 10:
                break
            freed = sum(f.stat().st_size for f in folder.glob("*.raw"))
            shutil.rmtree(folder, ignore_errors=True)
            size -= freed
        self._size = size


def received_frames(path: Path) -> list[bytes] | None:
    """The frames of a received file whose pixel data is uncompressed little endian, greyscale, 8 or 16
    bits: exactly what decoding its master gives (the master is verified bit-exact); None otherwise."""
    ds = pydicom.dcmread(path)
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not syntax(ts).little_native or "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    bits = int(ds.get("BitsAllocated", 0))
    if bits not in (8, 16):
        return None
    size = int(ds.Rows) * int(ds.Columns) * bits // 8
    count = int(ds.get("NumberOfFrames", 1) or 1)
    data = bytes(ds.PixelData)
    if len(data) < size * count:
        return None
    return [data[i * size : (i + 1) * size] for i in range(count)]


class Readahead:
    """The decode-ahead of one archive (see the module's docstring)."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="readahead")
        self._inflight: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._series: tuple[str, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.decoded = 0  # frames decoded ahead so far (for tests and benchmarks)
        settings = archive.settings
        self.spill = DecodedSpill(settings.decoded_cache_dir, settings.decoded_disk_cache_bytes)
        self.spilled = 0  # instances whose received frames went to the disk cache
        self.preread = 0  # frames read ahead from the disk cache into memory

    async def remember_received(self, received: Path, master_key: str) -> None:
        """The master made from `received` is in place under `master_key`: keep the received file's frames,
        if they are uncompressed, as that master's decoded frames (no decode needed later)."""
        if self.spill.capacity <= 0:
            return
        try:
            frames = await asyncio.to_thread(received_frames, received)
            if frames is not None:
                await asyncio.to_thread(self.spill.write, master_key, frames)
                self.spilled += 1
        except Exception:  # a cache: the frames are decoded when asked for instead
            log.warning("cannot keep the uncompressed frames of %s", received, exc_info=True)

    async def ready_frame(self, rec: InstanceRecord, number: int) -> bytes | None:
        """The frame, if it needs no decode: decoded already (memory), or kept on disk."""
        if (hit := self._cache.get((rec.blob_key, number))) is not None:
            return hit
        if not self.spill.has(rec.blob_key, number):
            return None
        return await asyncio.to_thread(self.spill.read, rec.blob_key, number)

    @property
    def _cache(self) -> Any:
        return self.archive._decoded  # the archive's ByteLRU of decoded frames, read by native_frame

    def open_series(
        self, study: str, series: str, start: InstanceRecord | None = None, number: int = 1
    ) -> None:
        """Start decoding `series` ahead (from frame `number` of `start`, else from its first instance),
        unless it is being decoded ahead already, or was, and that frame is in the cache."""
        if self._series == (study, series) and self._task is not None:
            if not self._task.done():
                return
            if (
                start is None
                or not decodable(start)
                or self._cache.get((start.blob_key, number)) is not None
                or self.spill.has(start.blob_key, number)
            ):
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
            await asyncio.sleep(
                0.05
            )  # the client's first request (sent right after the metadata) comes first
            recs = [r for r in await self.archive.index.instances(study, series) if decodable(r)]
            start = next((i for i, r in enumerate(recs) if r.sop_uid == start_sop), 0)
            budget = self._cache.capacity * 3 // 4
            for rec in recs[start:] + recs[:start]:
                await asyncio.sleep(0)  # never hold the event loop for a whole series
                for number in range(1, rec.number_of_frames + 1):
                    key = (rec.blob_key, number)
                    if self._cache.get(key) is not None or key in self._inflight:
                        continue
                    if self.spill.has(rec.blob_key, number):
                        # Kept on disk: no decode, but read ahead all the same, so the client's request
                        # costs a memory lookup rather than a file read through a thread.
                        data = await asyncio.to_thread(self.spill.read, rec.blob_key, number)
                        if data is None:
                            continue
                        self.preread += 1
                    else:
                        data = await self._decode(rec, number)
                        self.decoded += 1
                    self._cache.put(key, data)
                    budget -= len(data)
                    if budget <= 0:
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            # Decoding ahead is a courtesy: a failure here is answered when the frame itself is asked for.
            log.exception("decode-ahead of series %s stopped", series)

    async def _decode(self, rec: InstanceRecord, number: int) -> bytes:
        key = (rec.blob_key, number)
        codestream = await self.archive.read_frame(rec, number)
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, _decode_frame, codestream, rec.bits_allocated or 0, rec.pixel_representation == 1
        )
        self._inflight[key] = future
        try:
            return await asyncio.shield(future)
        finally:
            self._inflight.pop(key, None)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
