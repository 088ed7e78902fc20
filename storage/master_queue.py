"""The durable background queue that turns received instances into masters.

Jobs are rows written in the same transaction as the received instance, so the queue survives a
restart. Encoding runs in a thread pool sized to the cores (OpenJPEG releases the GIL), at a lower OS
priority than request handling, so uploads stay fast while masters are made. Until its master is
ready an instance is served from the received file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from storage.codec import MasterNotPossible
from storage.dicom_file import file_sha256
from storage.masters import make_master
from storage.readahead import readahead

if TYPE_CHECKING:
    from storage.archive import Archive

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # an instance that crashed the encoder this often is kept as received
NICENESS = 10
# A request that looked up the received blob just before its master replaced it may still open it:
# the received blob is deleted only after this grace period.
DELETE_GRACE_SECONDS = 30.0
# Uploads come first: masters wait while uploads are arriving (and this long after the last one),
# but never longer than MAX_YIELD_SECONDS in a row, so a steady stream of uploads cannot starve them.
QUIET_SECONDS = 1.0
MAX_YIELD_SECONDS = 30.0


def _lower_priority() -> None:
    # Linux applies nice values per thread: encoding yields the CPU to request handling.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


class MasterQueue:
    def __init__(self, archive: Archive, workers: int = 0) -> None:
        self.archive = archive
        self.workers = workers or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="master", initializer=_lower_priority)
        self._wake = asyncio.Event()
        self._busy: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._doomed: dict[str, asyncio.TimerHandle] = {}
        self._uploads = 0
        self._last_upload = 0.0

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[None]:
        """Mark an upload in progress, so masters give it the CPU."""
        self._uploads += 1
        try:
            yield
        finally:
            self._uploads -= 1
            self._last_upload = time.monotonic()

    async def _yield_to_uploads(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < MAX_YIELD_SECONDS and (
            self._uploads or time.monotonic() - self._last_upload < QUIET_SECONDS
        ):
            await asyncio.sleep(0.1)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="master-queue")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.pool.shutdown(wait=True, cancel_futures=True)
        for key, timer in list(self._doomed.items()):
            timer.cancel()
            await self.archive.blobs.delete(key)
        self._doomed.clear()

    def _delete_later(self, key: str) -> None:
        def fire() -> None:
            self._doomed.pop(key, None)
            asyncio.ensure_future(self.archive.blobs.delete(key))

        self._doomed[key] = asyncio.get_running_loop().call_later(DELETE_GRACE_SECONDS, fire)

    @property
    def busy(self) -> int:
        return len(self._busy)

    async def drain(self) -> None:
        """Wait until no job is pending or running (for the import command and tests)."""
        self.start()
        self.notify()
        while self._busy or (await self.archive.index.job_counts()).get("pending", 0):
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.workers)
        while True:
            jobs = await self.archive.index.pending_masters(self.workers * 2, self._busy)
            if not jobs:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=5)
                continue
            for sop, key, attempts in jobs:
                await slots.acquire()
                await self._yield_to_uploads()
                self._busy.add(sop)
                task = asyncio.create_task(self._guarded(sop, key, attempts))
                task.add_done_callback(functools.partial(self._done, sop, slots))

    def _done(self, sop: str, slots: asyncio.Semaphore, _task: asyncio.Task[None]) -> None:
        self._busy.discard(sop)
        slots.release()

    async def _guarded(self, sop: str, key: str, attempts: int) -> None:
        try:
            await self._one(sop, key, attempts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("master job for %s failed; it will be retried", sop)

    async def _keep(self, sop: str, key: str, reason: str) -> None:
        checksum = await asyncio.get_running_loop().run_in_executor(
            self.pool, file_sha256, self.archive.blobs.local_path(key))
        await self.archive.index.keep_as_received(sop, key, reason, checksum)

    async def _one(self, sop: str, key: str, attempts: int) -> None:
        index, blobs = self.archive.index, self.archive.blobs
        if attempts >= MAX_ATTEMPTS:
            await self._keep(sop, key, f"gave up after {attempts} attempts")
            return
        if await index.current_blob(sop) != key:
            await index.drop_job(sop, key)  # replaced or deleted meanwhile
            return
        await index.count_attempt(sop)
        loop = asyncio.get_running_loop()
        try:
            settings = self.archive.settings
            master = await loop.run_in_executor(
                self.pool, functools.partial(make_master, bulk_data_threshold=settings.bulk_data_threshold),
                blobs.local_path(key), settings.tmp_dir,
            )
        except MasterNotPossible as exc:
            log.info("instance %s kept as received: %s", sop, exc)
            await self._keep(sop, key, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - an encoder failure keeps the instance as received
            log.warning("encoder failure for %s, kept as received: %s", sop, exc)
            await self._keep(sop, key, f"encoder failure: {type(exc).__name__}: {exc}")
            return
        new_key = self.archive.new_blob_key(master.parsed.series_uid, sop)
        try:
            size = await blobs.put_file(new_key, master.path)
        finally:
            master.path.unlink(missing_ok=True)
        if await index.apply_master(key, master.parsed, new_key, size, master.fidelity, master.pixel_sha256):
            await readahead(self.archive).remember_received(blobs.local_path(key), new_key)  # uncompressed frames
            self._delete_later(key)
        else:
            await blobs.delete(new_key)
