"""The SQL index: studies, series and instances, on SQLite (embedded) or PostgreSQL (scale-out)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import bindparam, create_engine, delete, event, func, make_url, select, text, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage import schema
from storage.dicom_file import ParsedInstance
from storage.ladder import LADDER_JOB, ladder_measured
from storage.tiers import COLD, HOT, hot_key, tier_of

S, SE, I, J = schema.studies, schema.series, schema.instances, schema.master_jobs
SUCC, QA, TRASH = schema.instance_successors, schema.lossy_qa, schema.blob_trash
T = TypeVar("T")


@dataclass(frozen=True)
class InstanceRecord:
    """What the index knows about one stored instance (no metadata JSON: that is fetched separately)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    frames: list[list[list[int]]]
    number_of_frames: int
    is_master: bool = False  # a verified layered JPEG 2000 master (can be cut)
    # Its master is still being made: cuts of it can be encoded on the fly (Archive.hurry_master).
    pending_master: bool = False
    bits_allocated: int | None = None
    pixel_representation: int | None = None

    @property
    def version(self) -> str:
        """Names the stored bytes, whatever tier holds them: a new master or a replacement gets a new blob
        key, a move to the cold tier keeps the bytes and so the version (ETags stay valid)."""
        return hot_key(self.blob_key)

    @classmethod
    def from_row(cls, row: Any) -> InstanceRecord:
        return cls(
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            sop_uid=row.sop_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax=row.transfer_syntax,
            blob_key=row.blob_key,
            size=row.size,
            frames=orjson.loads(row.frames),
            number_of_frames=row.number_of_frames,
            is_master=bool(row.is_master),
            bits_allocated=row.bits_allocated,
            pixel_representation=row.pixel_representation,
        )


INSTANCE_COLUMNS = (
    I.c.study_uid,
    I.c.series_uid,
    I.c.sop_uid,
    I.c.sop_class_uid,
    I.c.transfer_syntax,
    I.c.blob_key,
    I.c.size,
    I.c.frames,
    I.c.number_of_frames,
    I.c.fidelity.isnot(None).label("is_master"),
    I.c.bits_allocated,
    I.c.pixel_representation,
)


@dataclass(frozen=True)
class MasterState:
    fidelity: bytes | None  # the per-frame ladder (JSON) once the master exists
    pending: bool  # a master is being made
    reason: str  # why there is none, when it was tried and the instance kept as received


INSTANCE_ORDER = (I.c.series_uid, I.c.instance_number, I.c.sop_uid)

# PostgreSQL advisory locks of studies are (STUDY_LOCK_SPACE, a 32-bit hash of the UID): a lock space of
# their own (two-key locks never conflict with the one-key locks of storage/lifecycle/schedule.py); two
# studies whose hashes collide merely wait for each other.
STUDY_LOCK_SPACE = 0x53545544


def _study_lock_key(study_uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(study_uid.encode(), digest_size=4).digest(), "big", signed=True)


def _scope(study: str, series: str | None, sop: str | None):
    """Instances of a study, or of one of its series, or one instance."""
    cond = I.c.study_uid == study
    if series is not None:
        cond = cond & (I.c.series_uid == series)
    if sop is not None:
        cond = cond & (I.c.sop_uid == sop)
    return cond


def _master_pending(sop: Any) -> Any:
    """Whether the instance `sop` (a UID, or the instances table's column) has a master job pending."""
    return select(J.c.sop_uid).where((J.c.sop_uid == sop) & (J.c.state == "pending")).exists()


def _study_values(p: ParsedInstance) -> dict[str, Any]:
    return {**p.study_row, "patient_name_ci": p.study_row["patient_name"].lower(), "updated_at": time.time()}


def _series_values(p: ParsedInstance) -> dict[str, Any]:
    return p.series_row


def _instance_values(p: ParsedInstance, blob_key: str, size: int) -> dict[str, Any]:
    return {
        **p.instance_row,
        "blob_key": blob_key,
        "size": size,
        "received_size": size,
        "created_at": time.time(),
        "fidelity": None,
        "pixel_sha256": None,
        # Every new version of an instance is written to the hot store (a re-upload of a cold instance too).
        "tier": HOT,
    }


def _by_key(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: rows[key] for key in sorted(rows)}


SQLITE_MMAP_BYTES = 1 << 30


SQLITE_BUSY_MS = 30000


def _set_wal(cur: Any) -> None:
    """Switch the file to WAL. Several processes opening a new index at once (one of them migrating it)
    can make this fail with "database is locked" at once, without SQLite's busy timeout applying: it is
    tried again until the same timeout has passed. Only at a connection's start, and only then."""
    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError: sqlite3's, or aiosqlite's adaptation
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    # WAL lets readers run during writes; NORMAL syncs at checkpoints, which keeps every committed
    # row across a process crash (blobs themselves are fsynced before their row is written).
    _set_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Read the file through a memory map (shared by every connection, through the OS page cache) rather
    # than a read() per page into each connection's 2 MB cache: an offset deep into 100,000 studies walks
    # ~8 MB of index, 6.1 ms with reads against 1.9 ms mapped (measured on this machine). Writes are not
    # mapped.
    cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    # PS3.4 matching is case-sensitive except where we ask for it (person names).
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


def _sqlite_point_reader_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    # It runs on the event loop's thread: if the file is ever locked (WAL recovery after a crash), give
    # up at once and read through the pool instead of holding every request.
    cur.execute("PRAGMA busy_timeout=0")
    cur.close()


# PostgreSQL's serialization_failure and deadlock_detected: the transaction can simply be run again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})
WRITE_ATTEMPTS = 5


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


class Index:
    def __init__(
        self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0, statement_timeout: float = 60.0
    ) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        options: dict[str, Any] = {}
        if make_url(url).drivername == "postgresql+asyncpg":
            # A database that stops answering gives an error within these bounds, never a hang; a pooled
            # connection the database dropped (a restart, a failover) is noticed before it is used.
            connect_args.update(timeout=connect_timeout, command_timeout=statement_timeout)
            options.update(pool_size=pool_size, pool_pre_ping=True)
            # asyncpg prepares every statement; after five runs PostgreSQL may switch a prepared statement
            # to a generic plan, made without the values: for `study_date BETWEEN $1 AND $2 ... LIMIT $3`
            # or `patient_id LIKE $1` that plan ignores how selective the values are (no trigram index
            # for an infix pattern, a full sort for a range). Planning each execution costs ~0.1 ms.
            connect_args["server_settings"] = {"plan_cache_mode": "force_custom_plan"}
        self.engine: AsyncEngine = create_async_engine(url, connect_args=connect_args, **options)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # SQLite's trigram index for infix wildcards (migration 0006), when this SQLite could make it.
        self.trigram = False
        # SQLite allows one writer; queueing writers here is cheaper than SQLITE_BUSY retries.
        self._write_lock = asyncio.Lock()
        self._upserts: dict[tuple[str, tuple[str, ...]], Any] = {}
        # On an SQLite file, write transactions run whole in one thread on a plain sqlite3 connection.
        # Through aiosqlite every statement is a round trip through the event loop, and while an upload
        # keeps the loop busy each trip waits its turn, with the only write lock held meanwhile.
        self._writer_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._point_reader: Engine | None = None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            sync_url = make_url(url).set(drivername="sqlite")
            if sync_url.database not in (None, "", ":memory:"):
                self._writer_engine = create_engine(sync_url)
                event.listen(self._writer_engine, "connect", _sqlite_pragmas)
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="index-writer")
                # One instance by its UIDs (every frame request): a primary-key read of well under a
                # millisecond, run on the event loop's thread, where through aiosqlite's thread it costs
                # about 1.1 ms (measured on this machine). In WAL mode a reader never waits for a writer.
                self._point_reader = create_engine(sync_url)
                event.listen(self._point_reader, "connect", _sqlite_point_reader_pragmas)

    async def create(self) -> None:
        """Create the index, or carry an existing one forward to this code's schema (Alembic migrations)."""
        from storage import migrations

        async with self.engine.connect() as conn:
            await conn.run_sync(migrations.run)
            if self.is_sqlite:
                found = await conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'studies_trigram'"))
                self.trigram = found.first() is not None

    async def close(self) -> None:
        await self.engine.dispose()
        if self._point_reader is not None:
            self._point_reader.dispose()
        if self._writer is not None and self._writer_engine is not None:
            self._writer.submit(self._writer_engine.dispose).result()
            self._writer.shutdown()
            self._writer = None

    async def _write(self, transaction: Callable[[Connection], T]) -> T:
        """Run `transaction` (synchronous SQLAlchemy Core on one connection) as one write transaction."""
        async with self._write_lock:
            if self._writer is not None:
                return await asyncio.get_running_loop().run_in_executor(
                    self._writer, self._run_write, transaction
                )
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    async with self.engine.begin() as conn:
                        return await conn.run_sync(transaction)
                except DBAPIError as exc:
                    # Replicas writing the same study, series or instance at once (PostgreSQL): a
                    # deadlock or serialization failure rolls one back whole; it is run again.
                    if _sqlstate(exc) not in RETRY_SQLSTATES or attempt == WRITE_ATTEMPTS:
                        raise
                    await asyncio.sleep(0.01 * attempt * (1 + random.random()))
            raise AssertionError("unreachable")

    def _run_write(self, transaction: Callable[[Connection], T]) -> T:
        assert self._writer_engine is not None  # only called when the writer thread exists
        with self._writer_engine.begin() as conn:
            return transaction(conn)

    def _insert(self, table):
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    def _upsert(self, conn: Connection, table, key: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = tuple(rows[0])
        stmt = self._upserts.get((table.name, columns))
        if stmt is None:
            # Built once per table and column set: building `excluded` proxies every column of the table,
            # which cost more than executing the statement.
            insert = self._insert(table)
            keep = {c: insert.excluded[c] for c in columns if c != key}
            stmt = self._upserts[(table.name, columns)] = insert.on_conflict_do_update(
                index_elements=[key], set_=keep
            )
        conn.execute(stmt, rows)

    async def store(self, items: list[tuple[ParsedInstance, str, int]]) -> tuple[list[str], set[str]]:
        """Index stored instances in one transaction; returns the blob keys that the rows no longer use
        (put in the blob trash by the same transaction), and the SOP Instance UIDs the index already held
        (the instances these copies replaced)."""
        if not items:
            return [], set()
        # In key order, so that two transactions touching the same rows lock them in the same order.
        studies_rows = _by_key({p.study_uid: _study_values(p) for p, _, _ in items})
        series_rows = _by_key({p.series_uid: _series_values(p) for p, _, _ in items})
        inst_rows = _by_key({p.sop_uid: _instance_values(p, key, size) for p, key, size in items})

        def transaction(conn: Connection) -> tuple[list[str], set[str]]:
            self._lock_studies(conn, set(studies_rows))
            old = conn.execute(
                select(I.c.sop_uid, I.c.study_uid, I.c.series_uid, I.c.blob_key).where(
                    I.c.sop_uid.in_(list(inst_rows))
                )
            ).all()
            # A replaced instance may have belonged to another study, whose counts change too.
            self._lock_studies(conn, {r.study_uid for r in old} - set(studies_rows))
            self._upsert(conn, S, "study_uid", list(studies_rows.values()))
            self._upsert(conn, SE, "series_uid", list(series_rows.values()))
            self._upsert(conn, I, "sop_uid", list(inst_rows.values()))
            # An original sent again after a lifecycle rule replaced it by a lossy copy: the sender asked
            # for it, so it is stored as any new instance, and requests for it are no longer redirected.
            conn.execute(delete(SUCC).where(SUCC.c.sop_uid.in_(list(inst_rows))))
            self._queue_masters(conn, items)
            self._refresh_counts(
                conn,
                set(studies_rows) | {r.study_uid for r in old},
                set(series_rows) | {r.series_uid for r in old},
            )
            stale = [r.blob_key for r in old if r.blob_key != inst_rows[r.sop_uid]["blob_key"]]
            self._trash(conn, stale)
            return stale, {r.sop_uid for r in old}

        return await self._write(transaction)

    def _lock_studies(self, conn: Connection, studies: set[str]) -> None:
        """Lock these studies until the transaction ends (PostgreSQL; SQLite has one writer at a time).

        The study-level values (counts, ModalitiesInStudy, SOP classes) are recomputed from the instance
        rows in the transaction that changes them, and the blob a stored instance replaces is read from
        its row. With several server processes on one database, two transactions changing one study must
        not both read before either commits: the second would overwrite the first's counts with ones that
        miss the first's rows, or replace the first's instance row without seeing (and trashing) its blob.
        A row lock cannot do this for a study that does not exist yet (two replicas storing the first
        instances of one new study), so the lock is a transaction-level advisory lock on the study UID,
        taken before anything is read, in one order (no deadlock between two transactions); under READ
        COMMITTED every later statement of the waiting transaction sees what the first committed."""
        if self.is_sqlite or not studies:
            return
        keys = sorted({_study_lock_key(uid) for uid in studies})
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(:space, k) FROM unnest(CAST(:keys AS integer[])) "
                "WITH ORDINALITY AS t(k, n) ORDER BY n"
            ),
            {"space": STUDY_LOCK_SPACE, "keys": keys},
        )

    def _refresh_counts(self, conn: Connection, studies: set[str], series: set[str]) -> None:
        """Recompute the derived study and series attributes; drop levels left empty.

        A handful of grouped queries and one executemany per table, whatever the number of studies a
        request touched (a gateway often sends many small studies at once)."""
        if series:
            counts: dict[str, int] = dict(
                conn.execute(
                    select(I.c.series_uid, func.count())
                    .where(I.c.series_uid.in_(list(series)))
                    .group_by(I.c.series_uid)
                ).all()
            )
            if empty := [uid for uid in series if not counts.get(uid)]:
                conn.execute(delete(SE).where(SE.c.series_uid.in_(empty)))
            if counts:
                conn.execute(
                    update(SE)
                    .where(SE.c.series_uid == bindparam("uid"))
                    .values(num_instances=bindparam("n")),
                    [{"uid": uid, "n": n} for uid, n in counts.items()],
                )
        if not studies:
            return
        wanted = list(studies)
        n_inst: dict[str, int] = dict(
            conn.execute(
                select(I.c.study_uid, func.count()).where(I.c.study_uid.in_(wanted)).group_by(I.c.study_uid)
            ).all()
        )
        n_series: dict[str, int] = dict(
            conn.execute(
                select(SE.c.study_uid, func.count())
                .where(SE.c.study_uid.in_(wanted))
                .group_by(SE.c.study_uid)
            ).all()
        )
        modalities: dict[str, set[str]] = {uid: set() for uid in wanted}
        for uid, modality in conn.execute(
            select(SE.c.study_uid, SE.c.modality).where(SE.c.study_uid.in_(wanted)).distinct()
        ):
            if modality:
                modalities[uid].add(modality)
        classes: dict[str, set[str]] = {uid: set() for uid in wanted}
        for uid, sop_class in conn.execute(
            select(I.c.study_uid, I.c.sop_class_uid).where(I.c.study_uid.in_(wanted)).distinct()
        ):
            classes[uid].add(sop_class)
        if empty := [uid for uid in wanted if not n_inst.get(uid)]:
            conn.execute(delete(SE).where(SE.c.study_uid.in_(empty)))
            conn.execute(delete(S).where(S.c.study_uid.in_(empty)))
        rows = [
            {
                "uid": uid,
                "ni": n_inst[uid],
                "ns": n_series.get(uid, 0),
                "mods": "\\".join(sorted(modalities[uid])),
                "classes": "\\".join(sorted(classes[uid])),
            }
            for uid in wanted
            if n_inst.get(uid)
        ]
        if rows:
            conn.execute(
                update(S)
                .where(S.c.study_uid == bindparam("uid"))
                .values(
                    num_instances=bindparam("ni"),
                    num_series=bindparam("ns"),
                    modalities=bindparam("mods"),
                    sop_classes=bindparam("classes"),
                ),
                rows,
            )

    def _queue_masters(self, conn: Connection, items: list[tuple[ParsedInstance, str, int]]) -> None:
        """A pending job for each instance that will become a master; for every other one a job already
        "kept", with the reason, so that what is kept as received is counted with its reason."""
        now = time.time()
        jobs = [
            {
                "sop_uid": p.sop_uid,
                "blob_key": key,
                "state": "pending" if p.master_candidate else "kept",
                "attempts": 0,
                "reason": "" if p.master_candidate else p.kept_reason,
                "updated_at": now,
                "lease_owner": "",
                "lease_until": 0.0,
            }
            for p, key, _ in items
        ]
        self._upsert(conn, J, "sop_uid", jobs)

    # ---- the master queue ----------------------------------------------------------------------

    async def claim_masters(
        self, owner: str, limit: int, lease_seconds: float, series: list[str] | None = None
    ) -> list[tuple[str, str, int]]:
        """Take up to `limit` pending jobs whose lease is free or ran out (their replica died), for
        `owner`, until `lease_seconds` from now: (sop_uid, received blob key, attempts so far). With
        `series`, only jobs of instances in those series (asked for by a viewer); else the newest first,
        since the studies read first are the ones just acquired. On PostgreSQL the rows are locked with
        SKIP LOCKED, so replicas claiming at once never take the same job."""
        now = time.time()
        q = (
            select(J.c.sop_uid, J.c.blob_key, J.c.attempts)
            .where((J.c.state == "pending") & (J.c.lease_until < now))
            .limit(limit)
        )
        if series:
            q = q.where(J.c.sop_uid.in_(select(I.c.sop_uid).where(I.c.series_uid.in_(series))))
        q = q.order_by(J.c.updated_at.desc()).with_for_update(skip_locked=True)
        return await self._lease(q, lease_owner=owner, lease_until=now + lease_seconds)

    async def _lease(self, q: Any, **lease: Any) -> list[tuple[str, str, int]]:
        """Run the job query `q` (it locks the rows it finds) and give those jobs `lease` (owner, until,
        ...) in the same transaction: (sop_uid, blob key, attempts before this claim)."""

        def transaction(conn: Connection) -> list[tuple[str, str, int]]:
            rows = conn.execute(q).all()
            if rows:
                conn.execute(update(J).where(J.c.sop_uid.in_([r.sop_uid for r in rows])).values(**lease))
            return [(r.sop_uid, r.blob_key, r.attempts) for r in rows]

        return await self._write(transaction)

    async def ladder_claimable(self) -> bool:
        """Whether a ladder job could be claimed now (a read, so an idle queue does not write to ask)."""
        now = time.time()
        q = select(
            select(J.c.sop_uid).where((J.c.state == LADDER_JOB) & (J.c.lease_until < now)).exists()
            & ~select(J.c.sop_uid).where(J.c.state == "pending").exists()
        )
        async with self.engine.connect() as conn:
            return bool((await conn.execute(q)).scalar())

    async def claim_ladders(self, owner: str, limit: int, lease_seconds: float) -> list[tuple[str, str, int]]:
        """Take up to `limit` ladder jobs (masters whose lossy layers are not measured yet) whose lease is
        free or ran out, as claim_masters does: (sop_uid, master blob key, attempts so far), newest first.
        None while any master job is pending, here or on another replica: masters always come first, and
        the check is in the claiming statement itself, so it holds whatever the replicas do."""
        now = time.time()
        pending = J.alias("pending_master")
        q = (
            select(J.c.sop_uid, J.c.blob_key, J.c.attempts)
            .where(
                (J.c.state == LADDER_JOB)
                & (J.c.lease_until < now)
                & ~select(pending.c.sop_uid).where(pending.c.state == "pending").exists()
            )
            .order_by(J.c.updated_at.desc())
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return await self._lease(
            q, lease_owner=owner, lease_until=now + lease_seconds, attempts=J.c.attempts + 1
        )

    async def store_ladder(self, sop: str, blob_key: str, fidelity: list[dict[str, Any]]) -> bool:
        """Write the measured ladder of the master `blob_key`, if the instance still points at that blob
        (a re-upload or a replacement since gets nothing of it), and end its ladder job. Writing the
        same ladder twice is harmless. Whether it was written."""
        stmt = (
            update(I)
            .where((I.c.sop_uid == sop) & (I.c.blob_key == blob_key) & I.c.fidelity.isnot(None))
            .values(fidelity=orjson.dumps(fidelity))
        )
        job = delete(J).where((J.c.sop_uid == sop) & (J.c.blob_key == blob_key) & (J.c.state == LADDER_JOB))

        def transaction(conn: Connection) -> bool:
            written = conn.execute(stmt).rowcount == 1
            conn.execute(job)
            return written

        return await self._write(transaction)

    async def drop_ladder_job(self, sop: str, blob_key: str) -> None:
        """Forget a ladder job (its blob is gone, or it failed too often: the ladder stays unmeasured and
        is measured on demand by /layers)."""
        stmt = delete(J).where((J.c.sop_uid == sop) & (J.c.blob_key == blob_key) & (J.c.state == LADDER_JOB))
        await self._write(lambda conn: conn.execute(stmt))

    async def ladder_of(self, sop: str) -> tuple[str, bytes | None, list[list[list[int]]]] | None:
        """(blob key, stored ladder JSON, frame pieces) of an instance; None when it does not exist."""
        q = select(I.c.blob_key, I.c.fidelity, I.c.frames).where(I.c.sop_uid == sop)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else (row.blob_key, row.fidelity, orjson.loads(row.frames))

    async def extend_leases(self, owner: str, sops: list[str], lease_seconds: float) -> None:
        """Keep the jobs `owner` is still working on."""
        if sops:
            stmt = (
                update(J)
                .where(J.c.sop_uid.in_(sops) & (J.c.lease_owner == owner))
                .values(lease_until=time.time() + lease_seconds)
            )
            await self._write(lambda conn: conn.execute(stmt))

    async def lease_owners(self) -> list[str]:
        """The replicas holding leases that have not run out."""
        q = (
            select(J.c.lease_owner)
            .where((J.c.lease_until >= time.time()) & (J.c.lease_owner != ""))
            .distinct()
        )
        async with self.engine.connect() as conn:
            return [r.lease_owner for r in (await conn.execute(q)).all()]

    async def release_leases(self, owner: str) -> None:
        """Free the jobs a replica that is gone had claimed."""
        stmt = update(J).where(J.c.lease_owner == owner).values(lease_owner="", lease_until=0.0)
        await self._write(lambda conn: conn.execute(stmt))

    async def backlog(self) -> tuple[int, float | None]:
        """How many instances wait for a master, and since when the oldest has waited (epoch seconds)."""
        q = select(func.count(), func.min(J.c.updated_at)).where(J.c.state == "pending")
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(q)).one()
        return int(count), oldest

    async def count_attempt(self, sop: str) -> None:
        stmt = update(J).where(J.c.sop_uid == sop).values(attempts=J.c.attempts + 1)
        await self._write(lambda conn: conn.execute(stmt))

    async def keep_as_received(self, sop: str, blob_key: str, reason: str, sha256: str) -> None:
        """The instance stays as received; remember why (the job is not retried), and the checksum of
        the received file, which ingest leaves to the master queue."""
        job = (
            update(J)
            .where((J.c.sop_uid == sop) & (J.c.blob_key == blob_key))
            .values(state="kept", reason=reason[:2000], updated_at=time.time())
        )
        checksum = update(I).where((I.c.sop_uid == sop) & (I.c.blob_key == blob_key)).values(sha256=sha256)

        def transaction(conn: Connection) -> None:
            conn.execute(job)
            conn.execute(checksum)

        await self._write(transaction)

    async def apply_master(
        self,
        received_key: str,
        master: ParsedInstance,
        master_key: str,
        size: int,
        fidelity: list[dict[str, Any]],
        pixel_sha256: str,
    ) -> bool:
        """Point the instance at its master, if it still points at the blob the master was made from."""
        values = _instance_values(master, master_key, size)
        values.update(fidelity=orjson.dumps(fidelity), pixel_sha256=pixel_sha256)
        for key in ("sop_uid", "series_uid", "study_uid", "created_at", "received_size"):
            values.pop(key)
        job = (J.c.sop_uid == master.sop_uid) & (J.c.blob_key == received_key)
        # The job row lives on as the ladder job of the master (storage.ladder), in the same transaction:
        # a crash can leave neither a master without its ladder job nor a job without its master.
        ladder_job = {
            "state": LADDER_JOB,
            "blob_key": master_key,
            "attempts": 0,
            "reason": "",
            "updated_at": time.time(),
            "lease_owner": "",
            "lease_until": 0.0,
        }
        measured = ladder_measured(fidelity)

        def transaction(conn: Connection) -> bool:
            result = conn.execute(
                update(I)
                .where((I.c.sop_uid == master.sop_uid) & (I.c.blob_key == received_key))
                .values(**values)
            )
            if result.rowcount == 1 and not measured:
                conn.execute(update(J).where(job).values(**ladder_job))
            else:
                conn.execute(delete(J).where(job))
            return result.rowcount == 1

        return await self._write(transaction)

    async def swap_derived(
        self,
        original_sop: str,
        original_key: str,
        derived: ParsedInstance,
        derived_key: str,
        size: int,
        fidelity: list[dict[str, Any]],
        qa_rows: list[dict[str, Any]],
        reason: str,
    ) -> bool:
        """Put a derived (lossy) instance in the place of its original, in one transaction, if the
        original still points at the blob it was derived from: the derived row (keeping the original's
        received size, receipt time and tier), the original's row gone, the redirect from the original
        to it, its QA rows, and the original's blob queued in blob_trash (deleted after the commit).
        Counts do not change; the series' ready metadata is invalidated since its blob keys change
        (storage.metadata_cache). False when the original was replaced or deleted meanwhile."""
        values = _instance_values(derived, derived_key, size)
        values.update(fidelity=orjson.dumps(fidelity), pixel_sha256=None)
        now = time.time()

        def transaction(conn: Connection) -> bool:
            self._lock_studies(conn, {derived.study_uid})
            old = conn.execute(
                select(I.c.blob_key, I.c.received_size, I.c.created_at, I.c.tier, I.c.series_uid).where(
                    I.c.sop_uid == original_sop
                )
            ).first()
            if old is None or old.blob_key != original_key:
                return False
            row = {
                **values,
                "received_size": old.received_size,
                "created_at": old.created_at,
                "tier": old.tier,
            }
            self._upsert(conn, I, "sop_uid", [row])
            conn.execute(delete(I).where(I.c.sop_uid == original_sop))
            conn.execute(delete(J).where(J.c.sop_uid == original_sop))
            self._upsert(
                conn,
                SUCC,
                "sop_uid",
                [
                    {
                        "sop_uid": original_sop,
                        "successor_uid": derived.sop_uid,
                        "study_uid": derived.study_uid,
                        "series_uid": derived.series_uid,
                        "reason": reason,
                        "created_at": now,
                    }
                ],
            )
            conn.execute(delete(QA).where(QA.c.sop_uid == derived.sop_uid))
            if qa_rows:
                conn.execute(QA.insert(), [{**r, "created_at": now} for r in qa_rows])
            self._trash(conn, [original_key])
            self._refresh_counts(conn, {derived.study_uid}, {derived.series_uid, old.series_uid})
            return True

        return await self._write(transaction)

    async def successor(self, sop: str) -> tuple[str, str, str] | None:
        """(study, series, SOP Instance UID) of the instance that took the place of `sop`, if any."""
        q = select(SUCC.c.study_uid, SUCC.c.series_uid, SUCC.c.successor_uid).where(SUCC.c.sop_uid == sop)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else (row.study_uid, row.series_uid, row.successor_uid)

    async def drop_job(self, sop: str, blob_key: str) -> None:
        stmt = delete(J).where((J.c.sop_uid == sop) & (J.c.blob_key == blob_key))
        await self._write(lambda conn: conn.execute(stmt))

    async def job_counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(J.c.state, func.count()).group_by(J.c.state))).all()
        return {state: n for state, n in rows}

    async def kept_reasons(self) -> dict[str, int]:
        """How many instances are kept as received, per reason."""
        q = select(J.c.reason, func.count()).where(J.c.state == "kept").group_by(J.c.reason)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {reason: n for reason, n in rows}

    async def kept_as_received(self) -> list[tuple[str, str]]:
        """(sop_uid, reason) of every instance kept as received."""
        q = select(J.c.sop_uid, J.c.reason).where(J.c.state == "kept").order_by(J.c.reason, J.c.sop_uid)
        async with self.engine.connect() as conn:
            return [(r.sop_uid, r.reason) for r in (await conn.execute(q)).all()]

    async def job_state(self, sop: str) -> tuple[str, str] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(J.c.state, J.c.reason).where(J.c.sop_uid == sop))).first()
        return None if row is None else (row.state, row.reason)

    async def current_blob(self, sop: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(I.c.blob_key).where(I.c.sop_uid == sop))).scalar_one_or_none()

    async def master_state(self, study: str, series: str, sop: str) -> MasterState | None:
        """Whether an instance has its master, read in one query: the master and its job change in the
        same transaction, so two separate reads could see neither."""
        q = (
            select(I.c.fidelity, J.c.state, J.c.reason)
            .select_from(I.outerjoin(J, I.c.sop_uid == J.c.sop_uid))
            .where((I.c.study_uid == study) & (I.c.series_uid == series) & (I.c.sop_uid == sop))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        return MasterState(row.fidelity, row.state == "pending", row.reason or "")

    async def fidelity(self, study: str, series: str, sop: str) -> tuple[bool, bytes | None] | None:
        """(instance exists, per-frame fidelity JSON or None when there is no master)."""
        state = await self.master_state(study, series, sop)
        return None if state is None else (True, state.fidelity)

    async def checksums(self) -> list[tuple[str, str, str, str, str | None]]:
        """(sop_uid, blob_key, sha256, transfer syntax, pixel sha256) of every instance."""
        q = select(I.c.sop_uid, I.c.blob_key, I.c.sha256, I.c.transfer_syntax, I.c.pixel_sha256)
        async with self.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(q)).all()]

    # ---- reads -------------------------------------------------------------------------------

    async def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[InstanceRecord]:
        q = select(*INSTANCE_COLUMNS).where(_scope(study, series, sop)).order_by(*INSTANCE_ORDER)
        if sop is not None and self._point_reader is not None:
            try:
                with self._point_reader.connect() as sync_conn:
                    return [InstanceRecord.from_row(r) for r in sync_conn.execute(q).all()]
            except OperationalError:  # locked just now: read through the pool as every other read does
                pass
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [InstanceRecord.from_row(r) for r in rows]

    async def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[bytes]:
        """Stored metadata JSON of each matching instance (ordered by series, instance number)."""
        q = select(I.c.metadata).where(_scope(study, series, sop)).order_by(*INSTANCE_ORDER)
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def count_instances(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(I))).scalar_one()

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> list[str]:
        """Remove rows; returns the blob keys to delete (put in the blob trash by the same transaction)."""
        cond = _scope(study, series, sop)

        def transaction(conn: Connection) -> list[str]:
            self._lock_studies(conn, {study})
            rows = conn.execute(select(I.c.blob_key, I.c.series_uid, I.c.sop_uid).where(cond)).all()
            if not rows:
                return []
            conn.execute(delete(I).where(cond))
            # Jobs of the deleted instances go too (by key: an anti-join with every instance was a scan).
            sops = [r.sop_uid for r in rows]
            for i in range(0, len(sops), self.REPORT_CHUNK):
                chunk = sops[i : i + self.REPORT_CHUNK]
                conn.execute(delete(J).where(J.c.sop_uid.in_(chunk)))
                # A deleted derived instance takes its redirects and QA with it.
                conn.execute(delete(SUCC).where(SUCC.c.successor_uid.in_(chunk)))
                conn.execute(delete(QA).where(QA.c.sop_uid.in_(chunk)))
            self._refresh_counts(conn, {study}, {r.series_uid for r in rows})
            self._trash(conn, [r.blob_key for r in rows])
            return [r.blob_key for r in rows]

        return await self._write(transaction)

    # ---- storage tiers, the blob trash, access times ----------------------------------------------

    def _trash(self, conn: Connection, keys: list[str]) -> None:
        """Put blobs the rows no longer use in the trash, in the transaction that stopped using them: a
        crash before they are deleted leaves a row to finish the work (Archive.empty_blob_trash), never an
        orphaned blob."""
        if not keys:
            return
        now = time.time()
        stmt = self._insert(TRASH).on_conflict_do_nothing(index_elements=["blob_key", "tier"])
        conn.execute(stmt, [{"blob_key": k, "tier": tier_of(k), "queued_at": now} for k in keys])

    async def trash(self, limit: int) -> list[str]:
        """Blob keys in the trash, oldest first."""
        q = select(TRASH.c.blob_key).order_by(TRASH.c.queued_at, TRASH.c.blob_key).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def in_trash(self, keys: list[str]) -> list[str]:
        """Those of `keys` that the trash lists."""
        found: list[str] = []
        async with self.engine.connect() as conn:
            for i in range(0, len(keys), self.REPORT_CHUNK):
                chunk = keys[i : i + self.REPORT_CHUNK]
                found += (
                    await conn.execute(select(TRASH.c.blob_key).where(TRASH.c.blob_key.in_(chunk)))
                ).scalars()
        return found

    async def untrash(self, keys: list[str]) -> None:
        """Forget trash rows whose blobs are deleted."""
        if not keys:
            return

        def transaction(conn: Connection) -> None:
            for i in range(0, len(keys), self.REPORT_CHUNK):
                conn.execute(delete(TRASH).where(TRASH.c.blob_key.in_(keys[i : i + self.REPORT_CHUNK])))

        await self._write(transaction)

    async def trash_count(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(TRASH))).scalar_one()

    async def has_cold_instances(self) -> bool:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(I.c.sop_uid).where(I.c.tier == COLD).limit(1))).first()
        return row is not None

    async def movable_to_cold(self, study: str) -> list[Any]:
        """Instances of `study` in the hot tier whose master is not being made (a pending job will replace
        the blob): rows of sop_uid, blob_key, size, sha256."""
        q = (
            select(I.c.sop_uid, I.c.blob_key, I.c.size, I.c.sha256)
            .where((I.c.study_uid == study) & (I.c.tier == HOT) & ~_master_pending(I.c.sop_uid))
            .order_by(*INSTANCE_ORDER)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    async def point_at_cold(self, moves: list[tuple[str, str, str]]) -> list[bool]:
        """For each (sop_uid, hot key, cold key) whose cold copy is durable, in one transaction: point the
        instance at the cold key, if it still names the hot one and has no master job pending (a
        re-upload or a new master since wins), and put the key it no longer uses in the trash: the hot
        one when it moved, else the cold copy (unless the row names it: another process moved it first).
        Whether each moved."""

        def transaction(conn: Connection) -> list[bool]:
            done: list[bool] = []
            unused: list[str] = []
            for sop, hot, cold in moves:
                moved = conn.execute(
                    update(I)
                    .where((I.c.sop_uid == sop) & (I.c.blob_key == hot) & ~_master_pending(sop))
                    .values(blob_key=cold, tier=COLD)
                ).rowcount
                if moved == 1:
                    # A kept job names the blob it was about: the same one, now elsewhere.
                    conn.execute(
                        update(J).where((J.c.sop_uid == sop) & (J.c.blob_key == hot)).values(blob_key=cold)
                    )
                    unused.append(hot)
                elif (
                    conn.execute(select(I.c.blob_key).where(I.c.sop_uid == sop)).scalar_one_or_none() != cold
                ):
                    unused.append(cold)
                done.append(moved == 1)
            self._trash(conn, unused)
            return done

        return await self._write(transaction)

    async def record_access(self, times: dict[str, float]) -> None:
        """studies.accessed_at = the time given per study, unless it is later already (another replica)."""
        if not times:
            return
        stmt = (
            update(S)
            .where((S.c.study_uid == bindparam("uid")) & (S.c.accessed_at < bindparam("at")))
            .values(accessed_at=bindparam("at"))
        )
        rows = [{"uid": uid, "at": at} for uid, at in sorted(times.items())]
        await self._write(lambda conn: conn.execute(stmt, rows))

    # ---- reports (the import and verify commands) --------------------------------------------------

    # Values per IN (...) list: well under SQLite's and asyncpg's limits on bound parameters.
    REPORT_CHUNK = 500

    async def master_report(self, sops: list[str]) -> list[Row[Any]]:
        """Per instance: whether it has its master, else its master job's state and reason (None when no
        master was wanted: lossy originals, no pixel data), and what explains that (transfer syntax,
        frames, Bits Allocated). Rows have sop_uid, has_master, state, reason, transfer_syntax,
        number_of_frames, bits_allocated."""
        columns = (
            I.c.sop_uid,
            I.c.fidelity.isnot(None).label("has_master"),
            J.c.state,
            J.c.reason,
            I.c.transfer_syntax,
            I.c.number_of_frames,
            I.c.bits_allocated,
        )
        rows: list[Row[Any]] = []
        async with self.engine.connect() as conn:
            for i in range(0, len(sops), self.REPORT_CHUNK):
                q = (
                    select(*columns)
                    .select_from(I.outerjoin(J, I.c.sop_uid == J.c.sop_uid))
                    .where(I.c.sop_uid.in_(sops[i : i + self.REPORT_CHUNK]))
                )
                rows += (await conn.execute(q)).all()
        return rows
