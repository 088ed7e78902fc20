"""The archive: ingest (shared by STOW-RS and the import command) and reads, over an index and a blob store.

An instance becomes visible only after its blob is durable and its index row is committed, so a crash at
any point leaves either the whole instance or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import orjson
from pydicom.uid import UID
from sqlalchemy import text as sql_text

from storage import access_labels
from storage.access_times import AccessTimes
from storage.api_keys import ApiKeys
from storage.blobs import BlobStoreUnavailable, new_blob_key, open_blob_store
from storage.codec import CutError, cut, decode, info, levels_to_drop, to_htj2k, without_padding
from storage.codec_check import check_codec_stack
from storage.config import Settings
from storage.dicom_file import BASE_PLACEHOLDER, InvalidInstance, ParsedInstance
from storage.dicom_json import bulk_value
from storage.errors import CannotProduce, NotFound, NotReady, no_such
from storage.frame_forms import WHOLE, FramePlan, Source, Subset
from storage.index import Index, InstanceRecord, MasterState
from storage.ladder import LADDER_JOB, ladder_measured, max_errors
from storage.lifecycle import ApplyResult, OnChange, OnProgress, Policy, PolicyPlan
from storage.lifecycle.apply import apply_plan
from storage.lifecycle.plan import plan_policy
from storage.lifecycle.reports import recent_qa, study_qa
from storage.mastering.make import MasterNotPossible, container_dtype, provisional_codestream
from storage.mastering.queue import MasterQueue
from storage.metadata_cache import bodies as metadata_bodies
from storage.parse_warnings import parse_files_noting_warnings
from storage.preview import SeriesPreviewRow, preview_for_instance, series_preview
from storage.processes import exit_with, left_by_dead_processes
from storage.query import Level, Query, parse_query, run_query, scope_query
from storage.readahead import Readahead
from storage.render import RenderOptions, render_frame
from storage.stats import StorageStats, storage_stats
from storage.tiers import COLD, TieredBlobStore, cold_key, tier_of
from storage.transcode import frame_native, pixel_data_native, to_native
from storage.transfer_syntaxes import EXPLICIT_LE, HTJ2K, HTJ2K_LOSSLESS_RPCL, J2K, J2K_LOSSLESS, syntax

log = logging.getLogger(__name__)

# A readiness check that has no answer from the index by then fails.
READY_SECONDS = 5.0
# Moving a study to the cold tier: instances copied at once, and per index transaction.
COPY_PARALLEL = 4
MOVE_BATCH = 64
# Blobs deleted at once when the trash is emptied (S3 deletes are requests: in parallel they go faster).
DELETE_PARALLEL = 8

# PS3.4 / PS3.18 failure reasons used in FailedSOPSequence.
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700

# What parsing one received file gives: the instance, why it cannot be stored, or the parser's death.
Parsed = ParsedInstance | InvalidInstance | BrokenProcessPool
# With the warnings the parser gave about the file.
Noted = tuple[Parsed, list[str]]


@dataclass
class Outcome:
    """Result of storing one received object."""

    stored: bool
    sop_class_uid: str | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    failure_code: int = 0
    reason: str = ""
    # Stored, and the archive already held this SOP Instance: this copy replaced it.
    replaced: bool = False
    # What the parser warned about while reading the file (malformed but readable structure).
    warnings: list[str] = field(default_factory=list)


class Archive:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = open_blob_store(settings)
        # Where the cold tier is, for people (None: no cold tier).
        self.cold_tier: str | None = None
        if settings.cold_blob_url:
            tiered = TieredBlobStore(self.blobs, open_blob_store(settings, settings.cold_blob_url))
            self.blobs, self.cold_tier = tiered, tiered.cold_label
        self.index = Index(
            settings.sql_url,
            pool_size=settings.db_pool_size,
            connect_timeout=settings.db_connect_timeout,
            statement_timeout=settings.db_statement_timeout,
        )
        self.api_keys = ApiKeys(self.index.engine)
        self._sop_locks: dict[str, asyncio.Lock] = {}
        self.masters = MasterQueue(self.index, self.blobs, settings, on_master=self._keep_uncompressed)
        self._parsers: ProcessPoolExecutor | None = None
        self._parser_count = 1
        self._decoded = ByteLRU(settings.decoded_cache_bytes)
        self.readahead = Readahead(self)  # decode-ahead of the series a client opens
        self.codecs = ""  # codec versions, once check_codec_stack() passed
        self.access = AccessTimes(self.index.record_access)
        self._sweeping = asyncio.Lock()

    async def open(self, *, start_masters: bool = True, parser_processes: int | None = None) -> None:
        if start_masters:
            # Refuse to run a queue that could only keep every image as received (CodecStackError).
            self.codecs = await asyncio.to_thread(check_codec_stack)
        # A bucket that cannot be listed or written stops the start (BlobStoreUnavailable), as an
        # unreachable database does, rather than failing every upload afterwards.
        await self.blobs.check(write=True)
        await self.index.create()
        if self.cold_tier is None and await self.index.has_cold_instances():
            raise BlobStoreUnavailable(
                "some instances are in the cold tier, but no cold blob store is configured "
                "(set DICOMWEB_COLD_BLOB_URL to where they are)"
            )
        # Finish deletions a crash (or a failed delete) left in the trash.
        try:
            if swept := await self.empty_blob_trash():
                log.info("deleted %d blobs left in the trash", swept)
        except Exception as exc:  # noqa: BLE001 - blobs left over cost space, not correctness
            log.warning("could not empty the blob trash: %s", exc)
        self._parser_count = parser_processes if parser_processes is not None else (os.cpu_count() or 1)
        if self._parser_count > 1:
            self._parsers = self._new_parser_pool()
            await asyncio.gather(
                *(
                    asyncio.get_running_loop().run_in_executor(self._parsers, _warm_parser)
                    for _ in range(self._parser_count)
                )
            )
        if start_masters:
            self.masters.start()

    async def close(self) -> None:
        await self.masters.stop()
        await self.access.close()
        self.readahead.close()
        if self._parsers is not None:
            self._parsers.shutdown(wait=True, cancel_futures=True)
            self._parsers = None
        await self.index.close()
        await self.blobs.close()

    def new_tmp_dir(self) -> str:
        return tempfile.mkdtemp(dir=self.settings.tmp_dir)

    def clear_tmp(self) -> None:
        """Remove uploads and half-made files left behind by crashed processes (never acknowledged, so
        nothing is lost); a running server's or command's folder on the same data folder is left alone."""
        for stale in left_by_dead_processes(self.settings.tmp_root):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)

    # ---- ingest -------------------------------------------------------------------------------

    def _new_parser_pool(self) -> ProcessPoolExecutor:
        # forkserver: never fork this process, which has threads (SQLite, codec pool) running.
        return ProcessPoolExecutor(
            self._parser_count,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=exit_with,  # a killed server leaves no parser behind (storage/processes.py)
            initargs=(os.getpid(),),
        )

    async def _run_parser(self, job: functools.partial):
        """Run `job` in a parser process; a pool whose process died is replaced and the job tried once
        more."""
        for attempt in (1, 2):
            pool = self._parsers
            if pool is None:
                return await asyncio.to_thread(job)
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, job)
            except BrokenProcessPool:
                # A parser died (killed, out of memory): replace the pool, so one bad moment does not
                # refuse every later upload.
                if self._parsers is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._parsers = self._new_parser_pool()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _parse_chunk(self, paths: list[Path], alone: bool = False) -> list[Noted]:
        try:
            return await self._run_parser(
                functools.partial(parse_files_noting_warnings, paths, self.settings.bulk_data_threshold)
            )
        except BrokenProcessPool as exc:
            if alone or len(paths) == 1:
                return [(exc, [])] * len(paths)
        # Find the file that kills parsers: each one alone, so the others are still stored.
        return [r for p in paths for r in await self._parse_chunk([p], alone=True)]

    def _check(
        self, result: Parsed, path: Path, expected_study: str | None
    ) -> tuple[Outcome, ParsedInstance | None]:
        """The outcome of one parsed file, refused if it does not belong where it was sent."""
        if isinstance(result, InvalidInstance):
            return Outcome(False, failure_code=CANNOT_UNDERSTAND, reason=str(result)), None
        if isinstance(result, BrokenProcessPool):
            log.error("a parser process died on %s", path)
            return Outcome(
                False, failure_code=PROCESSING_FAILURE, reason="the parser crashed on this file"
            ), None
        outcome = Outcome(True, result.sop_class_uid, result.sop_uid, result.study_uid, result.series_uid)
        if expected_study is not None and result.study_uid != expected_study:
            outcome.stored = False
            outcome.failure_code = DOES_NOT_MATCH
            # Short enough for ErrorComment (LO, 64 characters).
            outcome.reason = "StudyInstanceUID does not match the study in the URL"
            return outcome, None
        return outcome, result

    def upload(self, expected_study: str | None = None) -> Upload:
        """Store files that arrive one by one (an upload), as `async with archive.upload() as batch`:
        see Upload. While it lasts, making masters gives the upload the CPU."""
        return Upload(self, expected_study)

    async def ingest(self, paths: list[Path], expected_study: str | None = None) -> list[Outcome]:
        """Store files; each is accepted or refused on its own. Files are consumed (moved)."""
        batch = IngestBatch(self, expected_study)
        for path in paths:
            batch.add(path)
        return await batch.finish()

    async def _store_parsed(
        self, paths: list[Path], parsed_files: list[Noted], expected_study: str | None
    ) -> list[Outcome]:
        prepared = [self._check(r, p, expected_study) for (r, _), p in zip(parsed_files, paths, strict=True)]
        outcomes = [o for o, _ in prepared]
        _note_warnings(outcomes, [noted for _, noted in parsed_files])
        # The same SOP Instance twice in one request: the last copy wins, stored once.
        chosen: dict[str, tuple[Path, ParsedInstance]] = {}
        for path, (_, parsed) in zip(paths, prepared, strict=True):
            if parsed is not None:
                chosen[parsed.sop_uid] = (path, parsed)
        locks = [self._sop_locks.setdefault(sop, asyncio.Lock()) for sop in sorted(chosen)]
        for lock in locks:
            await lock.acquire()
        try:
            # Blobs are written (and fsynced) in parallel: fsync releases the GIL.
            keyed = [
                (new_blob_key(parsed.series_uid, sop), path, parsed) for sop, (path, parsed) in chosen.items()
            ]
            sizes = await self.blobs.put_files([(key, path) for key, path, _ in keyed])
            items: list[tuple[ParsedInstance, str, int]] = []
            failed: set[str] = set()
            for (key, _, parsed), size in zip(keyed, sizes, strict=True):
                if isinstance(size, BaseException):
                    log.error("cannot store blob for %s: %s", parsed.sop_uid, size)
                    failed.add(parsed.sop_uid)
                else:
                    items.append((parsed, key, size))
            replaced: set[str] = set()
            try:
                stale, replaced = await self.index.store(items)
            except Exception as exc:
                # Nothing was committed: drop the new blobs so no orphan remains, and refuse them.
                log.exception("index write failed")
                failed |= {p.sop_uid for p, _, _ in items}
                for _, key, _ in items:
                    await self.forget_blob(key)
                reason = f"index write failed: {type(exc).__name__}"
            else:
                reason = "could not write the object to storage"
                # The blobs of replaced versions, put in the trash by the transaction.
                await self._empty_trash(stale)
        finally:
            for lock in locks:
                lock.release()
            for sop in chosen:
                held = self._sop_locks.get(sop)
                if held is not None and not held.locked():
                    self._sop_locks.pop(sop, None)
        self.masters.notify()
        for o in outcomes:
            if o.stored and o.sop_uid in failed:
                o.stored, o.failure_code, o.reason = False, OUT_OF_RESOURCES, reason
            o.replaced = o.stored and o.sop_uid in replaced
        return outcomes

    # ---- reads: what the HTTP layer asks for -------------------------------------------------

    async def check_health(self) -> None:
        """Raise if the index cannot be reached (one trivial statement: load balancers probe often)."""
        async with self.index.engine.connect() as conn:
            await conn.execute(sql_text("SELECT 1"))

    async def check_ready(self) -> None:
        """Raise NotReady (with the reason) unless the index and the blob store both answer now: what a
        load balancer asks before sending this replica requests."""
        try:
            async with asyncio.timeout(READY_SECONDS):
                async with self.index.engine.connect() as conn:
                    await conn.execute(sql_text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            raise NotReady(f"index unreachable: {type(exc).__name__}") from None
        try:
            await self.blobs.check()
        except BlobStoreUnavailable as exc:
            raise NotReady(f"blob store unreachable: {exc}") from None

    async def status(self) -> dict[str, Any]:
        """How many instances, how many still wait for a master (and since when, and how fast this
        replica makes them), how many are kept as received (no master) and for which reasons."""
        jobs = await self.index.job_counts()
        progress = await self.masters.progress()
        return {
            "instances": await self.index.count_instances(),
            "pending_masters": jobs.get("pending", 0),
            # Masters whose lossy layers are not measured yet (storage.ladder): measured once no master
            # waits, so this grows under steady uploads and drains when they pause.
            "pending_ladders": jobs.get(LADDER_JOB, 0),
            "oldest_pending_seconds": None
            if progress.oldest_seconds is None
            else round(progress.oldest_seconds, 1),
            "masters_per_second": round(progress.per_second, 2),
            "kept_as_received": jobs.get("kept", 0),
            "kept_as_received_reasons": await self.index.kept_reasons(),
            "masters_in_progress": progress.in_progress,
            "frames_decoded_ahead": self.readahead.decoded,
            "masters_with_uncompressed_frames_kept": self.readahead.spilled,
            "frames_read_ahead_from_disk": self.readahead.preread,
            # Where studies moved to the cold tier are kept (None: no cold tier configured).
            "cold_tier": self.cold_tier,
            "blobs_awaiting_deletion": await self.index.trash_count(),
        }

    async def count_instances(self) -> int:
        return await self.index.count_instances()

    async def stats(self) -> StorageStats:
        """Storage economics: bytes as received, stored and uncompressed, per modality and month, what they
        cost, a five-year projection, and the disk the caches use (storage/stats.py)."""
        return await storage_stats(self.index.engine, self.settings)

    async def job_counts(self) -> dict[str, int]:
        """Master jobs by state: pending, kept (as received)."""
        return await self.index.job_counts()

    async def pending_masters(self) -> int:
        return (await self.index.job_counts()).get("pending", 0)

    async def pending_ladders(self) -> int:
        return (await self.index.job_counts()).get(LADDER_JOB, 0)

    async def drain_masters(self, *, ladders: bool = False) -> None:
        """Wait until no master is waiting or being made (the import command, tests); with `ladders`,
        until every master's ladder is measured too (needs ladder workers: DICOMWEB_LADDER_WORKERS)."""
        await self.masters.drain(ladders=ladders)

    async def master_report(self, sops: list[str]) -> list[MasterReport]:
        """Per instance (that still exists): whether it has its master, else its job's state and why
        there is none."""
        return [
            MasterReport(row.sop_uid, bool(row.has_master), row.state or "", _kept_reason(row))
            for row in await self.index.master_report(sops)
        ]

    async def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[InstanceRecord]:
        """The instances of a study, a series of it, or one instance; NotFound if there are none. For
        WADO-RS: it records a read of the study (storage.access_times); code of the archive itself asks
        self.index."""
        recs = await self.index.instances(study, series, sop)
        if not recs:
            raise no_such(study, series, sop)
        self.access.record(study)
        return recs

    async def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[bytes]:
        """Each instance's DICOM JSON (with the base-URL placeholder); NotFound if there are none. A series
        asked for is being opened: its frames are decoded ahead for clients that read them uncompressed."""
        rows = await self.index.metadata(study, series, sop)
        if not rows:
            raise no_such(study, series, sop)
        self.access.record(study)
        if series is not None and sop is None:
            self.readahead.open_series(study, series)
        return rows

    async def compressed_series_metadata(self, study: str, series: str, base_url: str) -> bytes:
        """A series' metadata as gzip, with `base_url` in its URIs, kept ready per series version (valid
        across replicas, see storage.metadata_cache); NotFound if the series has no instance."""

        async def build() -> bytes | None:
            rows = await self.index.metadata(study, series)
            if not rows:
                return None
            body = (b"[" + b",".join(rows) + b"]").replace(BASE_PLACEHOLDER.encode(), base_url.encode())
            # Level 6 (not the per-request level 1): it is compressed once per version of the series.
            return gzip.compress(body, compresslevel=6, mtime=0)

        body = await metadata_bodies.get(
            self.index.engine, study, series, f"{self.index.url}|{base_url}", build
        )
        if body is None:
            raise no_such(study, series, None)
        self.access.record(study)
        self.readahead.open_series(study, series)
        return body

    async def preview_layers(self, rec: InstanceRecord) -> int | None:
        """The layer count `layers=preview` gives for this instance (storage.preview's rule); None when it
        has no master (a lossy original, a master still being made) or no lossy layer to offer."""
        if not rec.is_master:
            return None
        return await preview_for_instance(self.index.engine, rec.sop_uid, rec.blob_key)

    async def series_preview(self, study: str, series: str) -> list[SeriesPreviewRow]:
        """Per instance of the series: its SOP Instance UID, preview layer count, whether it has a master
        and whether its ladder is measured (storage.preview)."""
        rows = await series_preview(self.index.engine, study, series)
        if rows is None:
            raise no_such(study, series, None)
        return rows

    async def search(
        self,
        level: Level,
        params: list[tuple[str, str]],
        study: str | None = None,
        series: str | None = None,
        *,
        labels: frozenset[str] | None = None,
    ) -> SearchResult:
        """QIDO-RS: the matches of the query `params` at `level`, within a study or series if given, and
        among studies with one of `labels` if given. BadRequest (QueryError) for a malformed query;
        NotFound when the study or series does not exist (or cannot be seen)."""
        query = parse_query(level, params, study, series)
        visible = None if labels is None else access_labels.visible_studies(labels)
        results, remaining = await run_query(self.index, query, visible_studies=visible)
        if not results and study and level != "study":
            # Searching inside a study or series that does not exist: say so rather than "no match".
            found, _ = await run_query(self.index, scope_query(study, series), visible_studies=visible)
            if not found:
                raise no_such(study, series, None)
        return SearchResult(results, remaining, query.offset + len(results))

    # ---- access labels (see storage.access_labels) ------------------------------------------------

    async def study_hidden(self, study: str, labels: frozenset[str]) -> bool:
        """Whether `study` exists but shares none of `labels`."""
        return await access_labels.hidden(self.index.engine, study, labels)

    async def add_study_labels(self, studies: set[str], labels: frozenset[str]) -> None:
        await access_labels.add_labels(self.index.engine, studies, labels)

    async def study_labels(self, study: str, replace_with: frozenset[str] | None = None) -> list[str]:
        """The access labels of `study`, after replacing them when `replace_with` is given; NotFound if
        there is no such study."""
        if not await access_labels.study_exists(self.index.engine, study):
            raise no_such(study, None, None)
        if replace_with is not None:
            await access_labels.set_labels(self.index.engine, study, replace_with)
        return await access_labels.labels_of(self.index.engine, study)

    async def in_display_order(self, recs: list[InstanceRecord]) -> list[InstanceRecord]:
        """Series by Series Number (then UID), instances as the index gives them (Instance Number)."""
        if len({r.series_uid for r in recs}) < 2:
            return recs
        results, _ = await run_query(self.index, Query(level="series", study_uid=recs[0].study_uid))
        order = {row["0020000E"]["Value"][0]: i for i, row in enumerate(results)}
        return sorted(recs, key=lambda r: order.get(r.series_uid, len(order)))  # stable: keeps instance order

    async def master_state(self, study: str, series: str, sop: str, *, hurry: bool = False) -> MasterState:
        """Whether an instance has its master (and its fidelity ladder), or why not; NotFound if the
        instance does not exist. With `hurry`, a master still being made is waited for a moment first
        (see hurry_master)."""
        state = await self.index.master_state(study, series, sop)
        if state is None:
            raise no_such(study, series, sop)
        if hurry and state.pending:
            await self.hurry_master((await self.index.instances(study, series, sop))[0])
            return await self.master_state(study, series, sop)
        return state

    async def measured_master_state(self, study: str, series: str, sop: str) -> MasterState:
        """master_state (with `hurry`), with the master's ladder measured: if it is not yet, it is measured
        now (at normal priority: a client waits) and stored, as the ladder job would. A client asking for
        one instance's ladder is about to choose what to fetch by it; 55 ms of CPU for a CT slice serves it
        better than figures it cannot use. Still unmeasured if the master was replaced meanwhile, or its
        blob could not be read or decoded now (the ladder job will try again): the figures are optional."""
        state = await self.master_state(study, series, sop, hurry=True)
        if state.fidelity is None or ladder_measured(orjson.loads(state.fidelity)):
            return state
        try:
            measured = await self.masters.measure_now(sop)
        except Exception as exc:  # noqa: BLE001 - answered without the figures, never a 500
            log.warning("could not measure the ladder of %s now: %s", sop, type(exc).__name__)
            return state
        if measured is not None:
            return replace(state, fidelity=measured)
        return await self.master_state(study, series, sop)

    async def layer_errors(self, rec: InstanceRecord, number: int) -> tuple[int, ...] | None:
        """Maximum error of each layer prefix of frame `number` of a master, from the index; None when it
        is not known (no master, or its ladder not measured yet: the caller then decodes every layer)."""
        if not rec.is_master:
            return None
        found = await self.index.fidelity(rec.study_uid, rec.series_uid, rec.sop_uid)
        if not found or found[1] is None:
            return None
        frames = orjson.loads(found[1])
        if number > len(frames):
            return None
        return max_errors(frames[number - 1])

    # ---- reads: instances, values, frames ------------------------------------------------------

    def stored_bytes(self, rec: InstanceRecord) -> AsyncIterator[bytes]:
        """The instance as stored (Part 10), streamed."""
        return self.blobs.chunks(rec.blob_key)

    async def transcoded(self, rec: InstanceRecord, transfer_syntax: str) -> bytes:
        """The instance as Part 10 in an uncompressed `transfer_syntax`; CannotTranscode if it cannot be
        decoded."""
        async with self.blobs.local_file(rec.blob_key) as path:
            return await asyncio.to_thread(to_native, path, transfer_syntax)

    async def pixel_data_native(self, rec: InstanceRecord) -> bytes:
        """All frames' pixel data uncompressed, little endian (the Pixel Data bulk data)."""
        async with self.blobs.local_file(rec.blob_key) as path:
            return await asyncio.to_thread(pixel_data_native, path)

    async def bulk_value(self, rec: InstanceRecord, tag_path: str) -> bytes:
        """The binary value at `tag_path` as bulk data is sent; NotFound if there is none."""
        async with self.blobs.local_file(rec.blob_key) as path:
            value = await asyncio.to_thread(bulk_value, path, tag_path)
        if value is None:
            raise NotFound(f"no bulk data at {tag_path}")
        return value

    async def read_frame(self, rec: InstanceRecord, number: int) -> bytes:
        """Stored bytes of frame `number` (1-based), without decoding."""
        pieces = await asyncio.gather(
            *(self.blobs.read(rec.blob_key, off, length) for off, length in rec.frames[number - 1])
        )
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def frame(
        self, rec: InstanceRecord, number: int, plan: FramePlan, subset: Subset = WHOLE
    ) -> tuple[bytes, str]:
        """Frame `number` as `plan` says (see storage.frame_forms), and the transfer syntax the bytes
        really are in: a master neither cut nor reduced is labelled lossless."""
        if plan.source is Source.STORED:
            data = await self.read_frame(rec, number)
            return (
                without_padding(data) if syntax(plan.transfer_syntax).codestream else data
            ), plan.transfer_syntax
        if plan.source is Source.NATIVE:
            return await self.native_frame(rec, number), EXPLICIT_LE
        # Until the master exists, its codestream is encoded on the fly from the received frame: not
        # verified, so never labelled lossless.
        provisional = not rec.is_master
        if provisional:  # already reduced to the size asked for
            master = await self._provisional_frame(rec, number, subset.fsiz)
        else:
            master = await self.read_frame(rec, number)
        head = info(master)
        drop = (
            levels_to_drop(head.width, head.height, head.levels, *subset.fsiz)
            if subset.fsiz and not provisional
            else 0
        )
        try:
            if plan.source is Source.HTJ2K:
                # HTJ2K has a single quality layer: `layers` cannot apply, resolution levels can.
                if provisional:
                    whole = await asyncio.to_thread(to_htj2k, master)
                else:
                    whole = await self.htj2k_frame(rec, number)
                if drop == 0 and not provisional:
                    return whole, HTJ2K_LOSSLESS_RPCL if rec.transfer_syntax == J2K_LOSSLESS else HTJ2K
                return cut(whole, layers=None, drop_levels=drop), HTJ2K
            layers = subset.layers if subset.layers is not None and subset.layers < head.layers else None
            if provisional and subset.fsiz:
                # The reduced frame is small: all its layers cost a few kilobytes, while its first layers
                # (a share of a thumbnail's bytes) would be far worse than the master's first layers.
                layers = None
            if layers is None and drop == 0 and not provisional:
                # A derived (lossy) instance's whole frame is the lossy cut it holds.
                return without_padding(master), J2K_LOSSLESS if rec.transfer_syntax == J2K_LOSSLESS else J2K
            return cut(master, layers=layers, drop_levels=drop), J2K
        except CutError as exc:
            raise CannotProduce(f"cannot cut this frame: {exc}") from None

    async def _keep_uncompressed(self, received_key: str, master_key: str) -> None:
        """A master replaced a received file: keep the file's frames if they are uncompressed, as the
        master's decoded frames (storage.readahead's disk cache)."""
        try:
            async with self.blobs.local_file(received_key) as path:
                await self.readahead.remember_received(path, master_key)
        except FileNotFoundError:
            pass  # deleted meanwhile

    async def _provisional_frame(
        self, rec: InstanceRecord, number: int, fsiz: tuple[int, int] | None
    ) -> bytes:
        try:
            async with self.blobs.local_file(rec.blob_key) as path:
                return await asyncio.to_thread(provisional_codestream, path, number, fsiz)
        except MasterNotPossible as exc:
            raise CannotProduce(f"cannot cut this frame: {exc}") from None
        except FileNotFoundError:
            raise NotReady("the master of this instance was just made; ask again") from None

    async def hurry_master(self, rec: InstanceRecord) -> InstanceRecord:
        """For a request that needs the master of `rec`: if it is still being made, its series goes to
        the front of the queue and the request waits for it up to settings.master_wait_seconds. The
        record as it is then: the master's, or still the received file's, marked `pending_master`
        (cuts can then be encoded on the fly)."""
        if rec.is_master:
            return rec
        state = await self.master_state(rec.study_uid, rec.series_uid, rec.sop_uid)
        if not state.pending:
            # No master coming; or it came since `rec` was read: then the record as it is now.
            return (
                rec
                if state.fidelity is None
                else (await self.index.instances(rec.study_uid, rec.series_uid, rec.sop_uid))[0]
            )
        self.masters.want(rec.series_uid)
        deadline = time.monotonic() + self.settings.master_wait_seconds
        while (left := deadline - time.monotonic()) > 0:
            # This replica's queue says when it is done; another replica's work shows in the index.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.25)):
                    await self.masters.finished(rec.sop_uid)
            [now] = await self.index.instances(rec.study_uid, rec.series_uid, rec.sop_uid)
            if now.is_master or now.blob_key != rec.blob_key:
                return now
        return replace(rec, pending_master=True)

    def _htj2k_dir(self, blob_key: str) -> Path:
        tag = hashlib.sha1(blob_key.encode(), usedforsecurity=False).hexdigest()
        return self.settings.htj2k_cache_dir / tag[:2] / tag

    async def forget_blob(self, key: str) -> None:
        """Delete a blob and whatever was derived from it."""
        await self.blobs.delete(key)
        await asyncio.to_thread(shutil.rmtree, self._htj2k_dir(key), True)

    async def htj2k_frame(self, rec: InstanceRecord, number: int) -> bytes:
        """Frame `number` of a master as lossless HTJ2K (RPCL, TLM), encoded once and cached on disk.

        The cache is keyed by the master's blob key, so a replaced master never serves a stale frame."""
        path = self._htj2k_dir(rec.blob_key) / f"{number}.jphc"
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            pass
        master = await self.read_frame(rec, number)
        data = await asyncio.to_thread(to_htj2k, master)
        await asyncio.to_thread(_write_atomic, path, data)
        return data

    async def native_frame(self, rec: InstanceRecord, number: int) -> bytes:
        """Frame `number` uncompressed, little endian, as DICOM lays it out (interleaved colour).

        Stored uncompressed little-endian frames are read as they lie. Masters are decoded with OpenJPEG
        directly (one frame, all cores); recently decoded frames are kept in a bounded memory cache,
        since viewers scroll back and forth through a stack. CannotTranscode if it cannot be decoded."""
        if syntax(rec.transfer_syntax).little_native and rec.frames:
            return await self.read_frame(rec, number)
        cache_key = (rec.blob_key, number)
        if (hit := self._decoded.get(cache_key)) is not None:
            return hit
        # Decode the rest of the series ahead of this client; use a decode under way or kept on disk.
        self.readahead.open_series(rec.study_uid, rec.series_uid, rec, number)
        if (data := await self.readahead.ready_frame(rec, number)) is not None:
            return data
        if (data := await self.readahead.waiting(rec, number)) is not None:
            return data
        if rec.is_master and rec.bits_allocated in (8, 16):
            codestream = await self.read_frame(rec, number)
            dtype = container_dtype(rec.bits_allocated, rec.pixel_representation == 1)
            pixels = await asyncio.to_thread(decode, codestream, threads=os.cpu_count() or 1)
            data = pixels.astype(dtype, copy=False).tobytes()
        else:
            async with self.blobs.local_file(rec.blob_key) as path:
                data = await asyncio.to_thread(frame_native, path, number - 1)
        self._decoded.put(cache_key, data)
        return data

    async def render(self, rec: InstanceRecord, number: int, options: RenderOptions) -> bytes:
        """Frame `number` rendered as `options` say (JPEG or PNG); BadRenderRequest, CannotRender, or
        NotFound if the instance was deleted meanwhile."""
        # The index addresses most frames; the others (deflated, bit-packed) are decoded from the file.
        frame = await self.read_frame(rec, number) if number <= len(rec.frames) else None
        try:
            async with self.blobs.local_file(rec.blob_key) as path:
                return await asyncio.to_thread(
                    render_frame, path, rec.transfer_syntax, frame, number, options
                )
        except FileNotFoundError:
            raise NotFound("the instance was deleted while it was being rendered") from None

    # ---- lifecycle (storage.lifecycle) ------------------------------------------------------------

    async def lifecycle_plan(self, policy: Policy, *, ignore_study_date: bool = False) -> PolicyPlan:
        """The dry run of `policy`: what each rule would do now (from the index alone)."""
        return await plan_policy(self.index.engine, policy, ignore_study_date=ignore_study_date)

    async def apply_lifecycle_plan(
        self, plan: PolicyPlan, *, on_change: OnChange | None = None, on_progress: OnProgress | None = None
    ) -> ApplyResult:
        """Carry out a plan; crash-safe and resumable (see storage.lifecycle.apply)."""
        return await apply_plan(self, plan, on_change=on_change, on_progress=on_progress)

    async def lifecycle_summary(self, policy: Policy | None) -> dict[str, Any]:
        """GET {root}/lifecycle: the dry run's figures per rule (no policy: none)."""
        if policy is None:
            return {"policy": None, "rules": []}
        return (await self.lifecycle_plan(policy)).summary(self.settings)

    async def study_qa(self, study: str) -> list[dict[str, Any]]:
        """Per derived frame of a study, its fidelity against the original; NotFound for no such study."""
        rows = await study_qa(self.index.engine, study)
        if not rows and not await self.index.instances(study):
            raise no_such(study, None, None)
        return rows

    async def recent_qa(self, limit: int) -> list[dict[str, Any]]:
        """The most recently derived studies, one entry each, with their worst figures."""
        return await recent_qa(self.index.engine, limit)

    async def successor(self, sop: str) -> tuple[str, str, str] | None:
        """(study, series, SOP Instance UID) of the derived instance that took the place of `sop`."""
        return await self.index.successor(sop)

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Delete a study, series or instance; NotFound if there is none."""
        keys = await self.index.delete(study, series, sop)
        if not keys:
            raise no_such(study, series, sop)
        await self._empty_trash(keys)  # the transaction put them there
        return len(keys)

    # ---- storage tiers and the blob trash ------------------------------------------------------

    async def move_study_to_cold(self, study_uid: str) -> tuple[int, int]:
        """Move the blobs of a study's instances to the cold tier: (instances moved, bytes moved).

        Instances already cold, or whose master is still being made (the master will replace the blob),
        are left; so a second call moves what the first could not, and nothing else. Each blob is copied
        to the cold store (durable) before the row points at the copy, and the hot blob is deleted only
        after that commit (through the trash), so a crash at any moment leaves every row naming a blob
        that exists; at worst a cold copy without a row, which the next move of the study overwrites.
        BlobStoreUnavailable when no cold tier is configured."""
        if self.cold_tier is None:
            raise BlobStoreUnavailable("no cold tier: set DICOMWEB_COLD_BLOB_URL")
        rows = await self.index.movable_to_cold(study_uid)
        moved = moved_bytes = 0
        gate = asyncio.Semaphore(COPY_PARALLEL)

        async def stage(row: Any) -> Path | None:
            async with gate:
                return await self._stage_copy(row.blob_key, row.size, row.sha256)

        for start in range(0, len(rows), MOVE_BATCH):
            batch = rows[start : start + MOVE_BATCH]
            staged = await asyncio.gather(*(stage(row) for row in batch), return_exceptions=True)
            copies = [(row, path) for row, path in zip(batch, staged, strict=True) if isinstance(path, Path)]
            try:
                # Written together: the local store fsyncs each folder once for the lot.
                stored = await self.blobs.put_files([(cold_key(row.blob_key), path) for row, path in copies])
            finally:
                for _, path in copies:
                    await asyncio.to_thread(path.unlink, True)
            ready = [row for (row, _), size in zip(copies, stored, strict=True) if size == row.size]
            done = await self.index.point_at_cold(
                [(r.sop_uid, r.blob_key, cold_key(r.blob_key)) for r in ready]
            )
            for row, ok in zip(ready, done, strict=True):
                if ok:
                    moved, moved_bytes = moved + 1, moved_bytes + row.size
            await self._empty_trash([r.blob_key for r in ready] + [cold_key(r.blob_key) for r in ready])
            for error in [*staged, *stored]:
                if isinstance(error, BaseException):
                    raise error  # the cold store failed: what was copied is moved, the rest is not
        return moved, moved_bytes

    async def _stage_copy(self, key: str, size: int, sha256: str) -> Path | None:
        """The blob `key` copied to a temporary file, for the cold store; None (and a log line) if the
        blob is not what its row says (missing, another size or checksum), which `dicomweb verify`
        reports."""
        fd, name = tempfile.mkstemp(dir=self.settings.tmp_dir, prefix="cold-", suffix=".dcm")
        path = Path(name)
        good = False
        try:
            digest = hashlib.sha256()
            copied = 0
            with os.fdopen(fd, "wb") as fh:
                try:
                    async for piece in self.blobs.chunks(key):
                        await asyncio.to_thread(_write_and_hash, fh, digest, piece)
                        copied += len(piece)
                except FileNotFoundError:
                    log.error("blob %s is missing: not moved to the cold tier", key)
                    return None
            if copied != size or (sha256 and digest.hexdigest() != sha256):
                log.error("blob %s does not match its index row: not moved to the cold tier", key)
                return None
            good = True
            return path
        finally:
            if not good:
                await asyncio.to_thread(path.unlink, True)

    async def empty_blob_trash(self) -> int:
        """Delete every blob the trash lists (from its tier's store), then its trash row; the number
        deleted. Blobs that cannot be deleted now stay listed for the next time."""
        deleted = 0
        tried: set[str] = set()
        async with self._sweeping:
            while keys := [k for k in await self.index.trash(limit=500) if k not in tried]:
                tried.update(keys)
                deleted += await self._delete_listed(keys)
        return deleted

    async def _empty_trash(self, keys: list[str]) -> int:
        """Delete those of `keys` the trash lists (only listed blobs are ever deleted this way)."""
        if not keys:
            return 0
        return await self._delete_listed(await self.index.in_trash(keys))

    async def _delete_listed(self, keys: list[str]) -> int:
        gate = asyncio.Semaphore(DELETE_PARALLEL)

        async def forget(key: str) -> str | None:
            if tier_of(key) == COLD and self.cold_tier is None:
                return None  # its store is not configured now: left listed
            async with gate:
                try:
                    await self.forget_blob(key)
                except Exception as exc:  # noqa: BLE001 - left listed, tried again at the next sweep
                    log.warning("could not delete blob %s: %s", key, exc)
                    return None
            return key

        gone = [k for k in await asyncio.gather(*(forget(k) for k in keys)) if k is not None]
        await self.index.untrash(gone)
        return len(gone)


@dataclass
class MasterReport:
    sop_uid: str
    has_master: bool
    state: str  # pending, kept, or "" when no master was wanted
    reason: str  # why there is no master, when there is none and none is pending


def _kept_reason(row: Any) -> str:
    """The reason recorded with a kept job; for archives written before ingest recorded one for every
    instance it wanted no master for, a reason told by the index row."""
    if row.has_master or row.state == "pending":
        return ""
    if row.state == "kept" and row.reason:
        return str(row.reason)
    if not row.number_of_frames:
        return "no pixel data"
    if not syntax(row.transfer_syntax).lossless:
        return f"lossy original, never re-encoded: {UID(row.transfer_syntax).name}"
    if row.bits_allocated not in (8, 16):
        return f"no master for {row.bits_allocated}-bit pixels"
    return "no master for this photometric interpretation or number of samples"


@dataclass
class SearchResult:
    matches: list[dict[str, Any]]
    # How many more match beyond this page, and the offset that gets them.
    remaining: int
    next_offset: int


class IngestBatch:
    """Files of one upload, parsed while the rest of it is still arriving, then stored together.

    Parsing starts for every group of files as soon as the group is complete, so the parser processes
    work during the upload instead of after it. Groups rather than single files: each task sent to a
    parser process costs pickling and pipe round trips, a fifth of the parsing itself for a CT slice."""

    GROUP_FILES = 8
    GROUP_BYTES = 2 << 20

    def __init__(self, archive: Archive, expected_study: str | None) -> None:
        self.archive = archive
        self.expected_study = expected_study
        self._paths: list[Path] = []
        self._group: list[Path] = []
        self._group_bytes = 0
        self._parsing: list[asyncio.Future[list[Noted]]] = []

    def add(self, path: Path, size: int | None = None) -> None:
        self._paths.append(path)
        self._group.append(path)
        self._group_bytes += size if size is not None else path.stat().st_size
        if len(self._group) >= self.GROUP_FILES or self._group_bytes >= self.GROUP_BYTES:
            self._start_group()

    def _start_group(self) -> None:
        if self._group:
            self._parsing.append(asyncio.ensure_future(self.archive._parse_chunk(self._group)))
            self._group, self._group_bytes = [], 0

    async def finish(self) -> list[Outcome]:
        """Store every file added; one outcome per file, in order."""
        self._start_group()
        parsed = [r for group in await asyncio.gather(*self._parsing) for r in group]
        return await self.archive._store_parsed(self._paths, parsed, self.expected_study)

    async def abandon(self) -> None:
        """The upload failed: cancel parsing already started (it has no effects), store nothing."""
        for future in self._parsing:
            future.cancel()
        await asyncio.gather(*self._parsing, return_exceptions=True)


class Upload(IngestBatch):
    """An IngestBatch for one request, used as an async context manager: it gives the request a
    folder to spool parts into (`folder`; removed at the end, with whatever was not stored), tells the
    master queue an upload is in progress, and abandons the batch if the request fails before
    `finish()`."""

    def __init__(self, archive: Archive, expected_study: str | None) -> None:
        super().__init__(archive, expected_study)
        self.folder = ""
        self._marked = archive.masters.upload()
        self._finished = False

    async def __aenter__(self) -> Self:
        self.folder = self.archive.new_tmp_dir()
        await self._marked.__aenter__()
        return self

    async def finish(self) -> list[Outcome]:
        self._finished = True
        return await super().finish()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if not self._finished:
                await self.abandon()
            # Stored files were moved out; what is left are refused parts. Off the event loop: unlinks
            # wait for the file system journal.
            await asyncio.to_thread(shutil.rmtree, self.folder, True)
        finally:
            await self._marked.__aexit__(None, None, None)


class ByteLRU:
    """A least-recently-used cache of byte strings, bounded by their total size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[object, bytes] = OrderedDict()

    def get(self, key: object) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: object, value: bytes) -> None:
        if len(value) > self.capacity:
            return
        if (old := self._items.pop(key, None)) is not None:
            self.size -= len(old)
        self._items[key] = value
        self.size += len(value)
        while self.size > self.capacity:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)


def _note_warnings(outcomes: list[Outcome], noted: list[list[str]]) -> None:
    """Give each outcome its file's parser warnings; the log gets them at debug level only, since
    they can quote values of the file (patient data)."""
    for outcome, messages in zip(outcomes, noted, strict=True):
        outcome.warnings = messages
        for message in messages:
            log.debug("parser warning for %s: %s", outcome.sop_uid or "a refused file", message)


def _warm_parser() -> None:
    """Import what parsing needs, so the first upload does not pay for it."""


def _write_and_hash(fh: Any, digest: Any, piece: bytes) -> None:
    fh.write(piece)
    digest.update(piece)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
