"""The durable background queue that turns received instances into masters.

Jobs are rows written in the same transaction as the received instance, so the queue survives a
restart. Each replica claims jobs with a lease (SKIP LOCKED on PostgreSQL): a job is worked on by one
replica at a time, and the jobs of a replica that died go to the others once their leases run out.
Finishing a job twice is harmless: the master is swapped in only if the instance still points at the
blob it was made from.

Encoding runs in a thread pool sized to the cores (OpenJPEG releases the GIL), at a lower OS priority
than request handling, and waits while uploads arrive, so STOW stays fast. Three things keep masters
coming all the same:
- the series a viewer asks for (a cut, /layers, HTJ2K of an instance without its master) go first, and
  start at once whatever the uploads;
- a backlog older than BACKLOG_BOUND_SECONDS gets one worker at normal priority that never yields;
- the newest jobs go first: the studies read first are the ones just acquired.
Until its master is ready an instance is served from the received file.

A master's fidelity ladder (what each lossy layer prefix gives, storage.ladder) is measured after it, by
a ladder job: the master job's row, which `apply_master` turns into one (state LADDER_JOB, naming the
master's blob). Ladder jobs are claimed with the same leases, only while no master job is pending
anywhere (the claim itself checks it) and no upload arrives, and run in a pool of their own at the
lowest priority (nice 19), so a master that arrives meanwhile takes the CPU from them at once. A ladder
is written only if the instance still points at the master it was measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from storage.blobs import BlobStore, new_blob_key
from storage.codec import MasterNotPossible
from storage.config import Settings
from storage.dicom_file import file_sha256
from storage.index import Index
from storage.ladder import LADDER_JOB, ladder_measured, measure_master
from storage.mastering.make import make_master
from storage.processes import alive

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # an instance that crashed the encoder this often is kept as received
NICENESS = 10
# Ladder measurement yields to everything, masters included (CFS gives nice 19 a seventh of nice 10's share).
LADDER_NICENESS = 19
# A request that looked up the received blob just before its master replaced it may still open it:
# the received blob is deleted only after this grace period.
DELETE_GRACE_SECONDS = 30.0
# Uploads come first: background masters wait while uploads are arriving (and this long after the last
# one), but never longer than MAX_YIELD_SECONDS in a row.
QUIET_SECONDS = 1.0
MAX_YIELD_SECONDS = 30.0
# A backlog whose oldest job waited longer than this gets a worker that never yields.
BACKLOG_BOUND_SECONDS = 10.0
# A claimed job belongs to its replica this long, renewed while it works on it.
LEASE_SECONDS = 60.0
# Series asked for by viewers that are remembered at once (the oldest are forgotten first).
WANTED_SERIES = 64
# The rate in /status is over this window; the backlog is sampled this often for the growth warning.
RATE_WINDOW_SECONDS = 60.0
GROWTH_SAMPLES = 5


def lower_priority(niceness: int = NICENESS) -> None:
    # Linux applies nice values per thread: encoding yields the CPU to request handling.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


@dataclass(frozen=True)
class Progress:
    """How far behind the queue is: for /status."""

    backlog: int  # instances waiting for a master (all replicas)
    oldest_seconds: float | None  # how long the oldest of them has waited
    per_second: float  # masters made (or instances kept) here per second, over the last minute
    in_progress: int  # jobs this replica is working on now


class MasterQueue:
    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        settings: Settings,
        on_master: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.index = index
        # Told (received blob key, master blob key) when a master has replaced a received file.
        self.on_master = on_master
        self.blobs = blobs
        self.settings = settings
        self.workers = settings.workers or os.cpu_count() or 1
        # Unique per process: leases name the replica (and the process, for several on one host).
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="master", initializer=lower_priority)
        # Normal priority: instances a viewer waits for, and the worker an old backlog gets.
        self.urgent_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="master-urgent")
        self.ladder_workers = self.workers if settings.ladder_workers is None else settings.ladder_workers
        self.ladder_pool = ThreadPoolExecutor(
            max(1, self.ladder_workers),
            thread_name_prefix="ladder",
            initializer=functools.partial(lower_priority, LADDER_NICENESS),
        )
        self._ladders: set[str] = set()  # SOP UIDs whose ladder job runs here
        # On-demand measurements in flight (measure_now), so concurrent requests share one.
        self._measuring: dict[str, asyncio.Future[bytes | None]] = {}
        self._wake = asyncio.Event()
        self._busy: set[str] = set()
        self._urgent_busy = 0
        self._backlog_worker = False  # an urgent worker is on an old backlog
        self._normal_busy = 0
        self._task: asyncio.Task[None] | None = None
        # Every task started here, so none is garbage-collected while it runs.
        self._tasks: set[asyncio.Future[None]] = set()
        self._doomed: dict[str, asyncio.TimerHandle] = {}
        self._uploads = 0
        self._last_upload = 0.0
        self._yielding_since: float | None = None
        self._wanted: OrderedDict[str, None] = OrderedDict()  # series UIDs, most recently asked last
        self._finished: dict[str, asyncio.Event] = {}  # set when this replica ends the job of a SOP
        self._done_at: deque[float] = deque()
        self._backlog: tuple[int, float | None] = (0, None)
        self._backlog_read = 0.0
        self._samples: deque[int] = deque(maxlen=GROWTH_SAMPLES)

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[None]:
        """Mark an upload in progress, so background masters give it the CPU."""
        self._uploads += 1
        try:
            yield
        finally:
            self._uploads -= 1
            self._last_upload = time.monotonic()

    def _uploads_recent(self) -> bool:
        """Whether an upload is arriving, or ended less than QUIET_SECONDS ago."""
        return self._uploads > 0 or time.monotonic() - self._last_upload < QUIET_SECONDS

    def _uploads_first(self) -> bool:
        """Whether background masters should wait now (uploads arriving, and not yet for too long)."""
        if not self._uploads_recent():
            self._yielding_since = None
            return False
        now = time.monotonic()
        if self._yielding_since is None:
            self._yielding_since = now
        if now - self._yielding_since >= MAX_YIELD_SECONDS:
            self._yielding_since = None  # this once, a master goes ahead
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="master-queue")
            self._keep_task(asyncio.ensure_future(self._keep_leases()))

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.urgent_pool.shutdown(wait=True, cancel_futures=True)
        self.ladder_pool.shutdown(wait=True, cancel_futures=True)
        for key, timer in list(self._doomed.items()):
            timer.cancel()
            await self.blobs.delete(key)
        self._doomed.clear()

    def _keep_task(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _delete_later(self, key: str) -> None:
        def fire() -> None:
            self._doomed.pop(key, None)
            self._keep_task(asyncio.ensure_future(self.blobs.delete(key)))

        self._doomed[key] = asyncio.get_running_loop().call_later(DELETE_GRACE_SECONDS, fire)

    @property
    def busy(self) -> int:
        return len(self._busy)

    # ---- what viewers wait for ---------------------------------------------------------------------

    def want(self, series_uid: str) -> None:
        """A viewer needs masters of this series: its jobs go before all others, at once."""
        self._wanted[series_uid] = None
        self._wanted.move_to_end(series_uid)
        while len(self._wanted) > WANTED_SERIES:
            self._wanted.popitem(last=False)
        self.notify()

    async def finished(self, sop_uid: str) -> None:
        """Wait for this replica to end the job of `sop_uid` (master made, or kept as received); the
        caller bounds the wait (the job may be another replica's)."""
        event = self._finished.setdefault(sop_uid, asyncio.Event())
        try:
            await event.wait()
        finally:
            if self._finished.get(sop_uid) is event and not event.is_set():
                self._finished.pop(sop_uid, None)

    def _job_ended(self, sop_uid: str) -> None:
        self._done_at.append(time.monotonic())
        if (event := self._finished.pop(sop_uid, None)) is not None:
            event.set()

    # ---- how far behind ----------------------------------------------------------------------------

    async def _read_backlog(self) -> tuple[int, float | None]:
        """The backlog, read from the index at most once a second (every replica adds to it)."""
        if time.monotonic() - self._backlog_read >= 1.0:
            self._backlog_read = time.monotonic()
            self._backlog = await self.index.backlog()
        return self._backlog

    async def progress(self) -> Progress:
        count, oldest = await self._read_backlog()
        cutoff = time.monotonic() - RATE_WINDOW_SECONDS
        while self._done_at and self._done_at[0] < cutoff:
            self._done_at.popleft()
        age = max(0.0, time.time() - oldest) if oldest is not None else None
        return Progress(count, age, len(self._done_at) / RATE_WINDOW_SECONDS, len(self._busy))

    def _note_growth(self, count: int) -> None:
        """Warn when the backlog grew at every one of the last samples (one a minute)."""
        self._samples.append(count)
        grew = len(self._samples) == GROWTH_SAMPLES and all(
            b > a for a, b in zip(self._samples, list(self._samples)[1:], strict=False)
        )
        if grew:
            log.warning(
                "the master backlog keeps growing: %d instances wait (was %d %d minutes ago)",
                count,
                self._samples[0],
                GROWTH_SAMPLES - 1,
            )

    async def drain(self, *, ladders: bool = False) -> None:
        """Wait until no master job is pending or running (for the import command and tests); with
        `ladders`, until no ladder job is left either."""
        self.start()
        self.notify()
        # Polled: the jobs live in the index, where other processes may add or finish them too.
        while True:
            counts = await self.index.job_counts()
            masters_left = self._busy or counts.get("pending", 0)
            ladders_left = ladders and (self._ladders or counts.get(LADDER_JOB, 0))
            if not masters_left and not ladders_left:
                return
            self.notify()
            await asyncio.sleep(0.05)

    # ---- the loop ----------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Renew the leases of the jobs being worked on; sample the backlog for the growth warning."""
        last_sample = time.monotonic()
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(Exception):
                await self.index.extend_leases(self.owner, [*self._busy, *self._ladders], LEASE_SECONDS)
            if time.monotonic() - last_sample >= RATE_WINDOW_SECONDS:
                last_sample = time.monotonic()
                with contextlib.suppress(Exception):
                    self._note_growth((await self._read_backlog())[0])

    async def _claim(self, free: int, free_urgent: int) -> list[tuple[tuple[str, str, int], str]]:
        """Jobs to start now, each with its kind: "wanted" and "backlog" run on the urgent workers
        (normal priority, never yield), "background" on the others. The series viewers asked for take
        every free urgent worker; an old backlog takes one."""
        if self._wanted and free_urgent:
            wanted = list(self._wanted)
            jobs = await self.index.claim_masters(self.owner, free_urgent, LEASE_SECONDS, series=wanted)
            if jobs:
                return [(job, "wanted") for job in jobs]
            for series in wanted:  # nothing of them left to make
                self._wanted.pop(series, None)
        background = 0 if self._uploads_first() else free
        count, oldest = await self._read_backlog()
        old = count > 0 and oldest is not None and time.time() - oldest > BACKLOG_BOUND_SECONDS
        urgent = 1 if free_urgent and old and not self._backlog_worker else 0
        if background + urgent == 0:
            return []
        jobs = await self.index.claim_masters(self.owner, background + urgent, LEASE_SECONDS)
        return [(job, "backlog" if i < urgent else "background") for i, job in enumerate(jobs)]

    async def _run(self) -> None:
        await self._reclaim_from_dead_processes()
        while True:
            free = self.workers - self._normal_busy
            free_urgent = self.workers - self._urgent_busy
            started = 0
            if free or free_urgent:
                for (sop, key, attempts), kind in await self._claim(free, free_urgent):
                    if kind != "background":
                        backlog = kind == "backlog"
                        self._urgent_busy += 1
                        self._backlog_worker |= backlog
                        pool = self.urgent_pool
                        release: Callable[[], None] = functools.partial(self._release_urgent, backlog)
                    else:
                        self._normal_busy += 1
                        pool, release = self.pool, self._release_normal
                    self._busy.add(sop)
                    task = asyncio.create_task(self._guarded(sop, key, attempts, pool))
                    self._keep_task(task)
                    task.add_done_callback(functools.partial(self._done, sop, release))
                    started += 1
            started += await self._start_ladders()
            if not started:
                # Woken by new uploads, a viewer's request or a job ending; else look again shortly
                # (uploads going quiet, leases of a dead replica running out).
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5 if self._uploads_first() else 5)

    async def _start_ladders(self) -> int:
        """Start ladder jobs on the free ladder workers, if no upload is arriving and no master job is
        pending (asked by a read first: an idle queue does not take the write lock to learn nothing)."""
        free = self.ladder_workers - len(self._ladders)
        if free <= 0 or self._uploads_recent():
            return 0
        try:
            if not await self.index.ladder_claimable():
                return 0
            jobs = await self.index.claim_ladders(self.owner, free, LEASE_SECONDS)
        except Exception:  # the index failed: masters go on, ladders are asked for again next round
            log.exception("could not claim ladder jobs")
            return 0
        for sop, key, attempts in jobs:
            self._ladders.add(sop)
            task = asyncio.create_task(self._guarded_ladder(sop, key, attempts))
            self._keep_task(task)
            task.add_done_callback(functools.partial(self._ladder_done, sop))
        return len(jobs)

    def _ladder_done(self, sop: str, _task: asyncio.Task[None]) -> None:
        self._ladders.discard(sop)
        self.notify()

    async def _guarded_ladder(self, sop: str, key: str, attempts: int) -> None:
        try:
            await self._ladder(sop, key, attempts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ladder job for %s failed; it will be retried", sop)
            with contextlib.suppress(Exception):
                await self.index.extend_leases(self.owner, [sop], 0.0)

    async def _ladder(self, sop: str, key: str, attempts: int) -> None:
        """Measure the ladder of the master `key` of `sop` and store it (if `sop` still points at it)."""
        if attempts >= MAX_ATTEMPTS:
            log.warning("the ladder of %s failed %d times; left unmeasured", sop, attempts)
            await self.index.drop_ladder_job(sop, key)
            return
        found = await self.index.ladder_of(sop)
        if found is None or found[0] != key or found[1] is None:
            await self.index.drop_ladder_job(sop, key)  # replaced or deleted meanwhile
            return
        ladder = await self._measure(key, found[2], self.ladder_pool)
        await self.index.store_ladder(sop, key, ladder)

    async def _measure(
        self, key: str, frames: list[list[list[int]]], pool: ThreadPoolExecutor
    ) -> list[dict[str, Any]]:
        async with self.blobs.local_file(key) as path:
            return await asyncio.get_running_loop().run_in_executor(pool, measure_master, path, frames)

    async def measure_now(self, sop: str) -> bytes | None:
        """Measure the ladder of `sop`'s master now, at normal priority (a request waits for it), and
        store it: the function the ladder job uses. The stored ladder JSON; None when there is no master
        or it was replaced meanwhile. Concurrent calls for one instance share one measurement."""
        if (running := self._measuring.get(sop)) is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._measuring[sop] = future
        try:
            result = await self._measure_and_store(sop)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._measuring.pop(sop, None)

    async def _measure_and_store(self, sop: str) -> bytes | None:
        found = await self.index.ladder_of(sop)
        if found is None:
            return None
        key, stored, frames = found
        if stored is None:
            return None
        if ladder_measured(orjson.loads(stored)):
            return stored
        ladder = await self._measure(key, frames, self.urgent_pool)
        if not await self.index.store_ladder(sop, key, ladder):
            return None
        return orjson.dumps(ladder)

    def _release_urgent(self, backlog: bool) -> None:
        self._urgent_busy -= 1
        if backlog:
            self._backlog_worker = False

    def _release_normal(self) -> None:
        self._normal_busy -= 1

    async def _reclaim_from_dead_processes(self) -> None:
        """Free the leases of processes on this host that no longer run (killed, crashed), so their jobs
        start now rather than when the leases run out. Other hosts' leases are left to run out."""
        host = self.owner.split(":")[0]
        for owner in await self.index.lease_owners():
            name, _, rest = owner.partition(":")
            pid = rest.partition(":")[0]
            if name == host and pid.isdigit() and owner != self.owner and not alive(int(pid)):
                await self.index.release_leases(owner)

    def _done(self, sop: str, release: Callable[[], None], _task: asyncio.Task[None]) -> None:
        self._busy.discard(sop)
        release()
        self.notify()

    async def _guarded(self, sop: str, key: str, attempts: int, pool: ThreadPoolExecutor) -> None:
        try:
            await self._one(sop, key, attempts, pool)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("master job for %s failed; it will be retried", sop)
            with contextlib.suppress(Exception):  # give the job back now rather than when its lease ends
                await self.index.extend_leases(self.owner, [sop], 0.0)
        else:
            self._job_ended(sop)

    async def _keep(self, sop: str, key: str, reason: str, pool: ThreadPoolExecutor) -> None:
        async with self.blobs.local_file(key) as path:
            checksum = await asyncio.get_running_loop().run_in_executor(pool, file_sha256, path)
        await self.index.keep_as_received(sop, key, reason, checksum)

    async def _one(self, sop: str, key: str, attempts: int, pool: ThreadPoolExecutor) -> None:
        index, blobs, settings = self.index, self.blobs, self.settings
        if attempts >= MAX_ATTEMPTS:
            await self._keep(sop, key, f"gave up after {attempts} attempts", pool)
            return
        if await index.current_blob(sop) != key:
            await index.drop_job(sop, key)  # replaced or deleted meanwhile
            return
        await index.count_attempt(sop)
        loop = asyncio.get_running_loop()
        # A blob that cannot be fetched (the store failed) is not an encoder failure: that error leaves
        # this job, which is retried.
        async with blobs.local_file(key) as path:
            try:
                master = await loop.run_in_executor(
                    pool,
                    functools.partial(make_master, bulk_data_threshold=settings.bulk_data_threshold),
                    path,
                    settings.tmp_dir,
                )
            except MasterNotPossible as exc:
                log.info("instance %s kept as received: %s", sop, exc)
                await self._keep(sop, key, str(exc), pool)
                return
            except Exception as exc:  # noqa: BLE001 - an encoder failure keeps the instance as received
                log.warning("encoder failure for %s, kept as received: %s", sop, exc)
                await self._keep(sop, key, f"encoder failure: {type(exc).__name__}: {exc}", pool)
                return
        new_key = new_blob_key(master.parsed.series_uid, sop)
        try:
            size = await blobs.put_file(new_key, master.path)
        finally:
            master.path.unlink(missing_ok=True)
        if await index.apply_master(key, master.parsed, new_key, size, master.fidelity, master.pixel_sha256):
            if self.on_master is not None:
                await self.on_master(key, new_key)
            self._delete_later(key)
        else:
            await blobs.delete(new_key)
