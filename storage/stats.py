"""Storage economics (issue 16): what the archive holds, what it would hold as received, and what that costs.

One call, `storage_stats`, answers `dicomweb stats`, `GET {root}/stats` and the `/admin/` page. Everything
is summed by the database (GROUP BY), never by loading instance rows, so it stays a few table scans at any
size; the only Python work is on the groups (modalities x months).

Figures, per modality (the Modality of the instance's series) and per month (``YYYY-MM`` of the study's
StudyDate, else of when the instance was received, UTC):

- ``received_bytes``: the files as they were received (``instances.received_size``): what an archive that
  stores as received (Orthanc, a plain PACS) would hold;
- ``stored_bytes``: what is stored now (``instances.size``: the lossless master once it replaced the file,
  a lossy derivation once a lifecycle rule made one), split by tier (``hot_bytes``, ``cold_bytes``);
- ``uncompressed_bytes``: the Pixel Data uncompressed (Rows x Columns x Samples x Bits Allocated / 8 x
  frames, ``instances.pixel_bytes``; 0 for objects without pixels);
- ratios ``received_ratio`` = received / stored and ``uncompressed_ratio`` = uncompressed / stored (null
  when nothing is stored, or, for the latter, when the group has no pixel data).

Money: a month of storage costs ``bytes / 10^12 x price`` (TB = 10^12 bytes; the default price,
``DICOMWEB_PRICE_PER_TB_MONTH`` = 23, is Amazon S3 Standard's list price of USD 0.023 per GB-month, and
the cold tier's, ``DICOMWEB_COLD_PRICE_PER_TB_MONTH`` = 4, S3 Glacier Instant Retrieval's). "As received"
prices every received byte at the hot price (a plain archive has one tier); "as stored" prices hot bytes
at the hot price and cold bytes at the cold price; the saving is the difference. Amounts are not rounded
(a small archive's costs are fractions of a cent): readers format them.

Five-year projection: the archive keeps its current mix (the same ratios, the same share on each tier) and
grows by ``yearly_growth`` a year, compounded monthly: month m from now (m = 1..60) holds today's bytes
times ``(1 + growth) ^ (m / 12)``, so a month's cost is today's monthly cost times that factor. Each year
sums its twelve months; ``cumulative_saving`` adds the years' savings up. Bytes are given at each year's
end. A simple model on purpose: it answers "what does keeping the masters save over five years at our
growth", not a capacity plan.

Caches are not storage of the archive and are left out of every figure above, but they take disk too, so
they are reported beside it (``caches``): the decoded-frame disk cache (``cache/decoded``, storage/readahead,
bounded by DICOMWEB_DECODED_DISK_CACHE_MB) and the HTJ2K cache (``cache/htj2k``, storage/archive) under the
data folder of this replica.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from storage import schema
from storage.config import Settings

S, SE, I = schema.studies, schema.series, schema.instances

TB = 10**12
YEARS = 5
PRICE_SOURCE = (
    "Amazon S3 Standard list price (us-east-1, first 50 TB: USD 0.023 per GB-month); cold tier: "
    "S3 Glacier Instant Retrieval (USD 0.004 per GB-month). Set DICOMWEB_PRICE_PER_TB_MONTH and "
    "DICOMWEB_COLD_PRICE_PER_TB_MONTH to your own."
)


@dataclass
class Figures:
    """The byte counts of one group of instances (a modality, a month, both, or the whole archive)."""

    studies: int = 0
    instances: int = 0
    received_bytes: int = 0
    stored_bytes: int = 0
    uncompressed_bytes: int = 0
    cold_bytes: int = 0

    @property
    def hot_bytes(self) -> int:
        return self.stored_bytes - self.cold_bytes

    def add(self, other: Figures) -> None:
        """Add another group's sums (not its study count: a study can be in both)."""
        self.instances += other.instances
        self.received_bytes += other.received_bytes
        self.stored_bytes += other.stored_bytes
        self.uncompressed_bytes += other.uncompressed_bytes
        self.cold_bytes += other.cold_bytes

    def cost_as_received(self, settings: Settings) -> float:
        return self.received_bytes / TB * settings.price_per_tb_month

    def cost_as_stored(self, settings: Settings) -> float:
        return (
            self.hot_bytes / TB * settings.price_per_tb_month
            + self.cold_bytes / TB * settings.cold_price_per_tb_month
        )

    def to_json(self, settings: Settings) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "instances": self.instances,
            "received_bytes": self.received_bytes,
            "stored_bytes": self.stored_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "hot_bytes": self.hot_bytes,
            "cold_bytes": self.cold_bytes,
            "received_ratio": _ratio(self.received_bytes, self.stored_bytes),
            # null, not 0, for objects without pixel data (reports, presentation states)
            "uncompressed_ratio": _ratio(self.uncompressed_bytes, self.stored_bytes)
            if self.uncompressed_bytes
            else None,
            "cost_as_received_per_month": (self.cost_as_received(settings)),
            "cost_as_stored_per_month": (self.cost_as_stored(settings)),
            "saving_per_month": (self.cost_as_received(settings) - self.cost_as_stored(settings)),
        }


@dataclass
class CacheUse:
    name: str
    folder: str  # relative to the data folder
    bytes: int
    files: int


@dataclass
class ProjectedYear:
    year: int
    received_bytes: int  # at the year's end
    stored_bytes: int
    cost_as_received: float  # the year's twelve months
    cost_as_stored: float
    saving: float
    cumulative_saving: float


@dataclass
class StorageStats:
    """What `storage_stats` found; `to_json()` is the body of GET {root}/stats."""

    settings: Settings
    total: Figures
    by_modality: dict[str, Figures]
    by_month: dict[str, Figures]
    by_modality_month: dict[tuple[str, str], Figures]
    caches: list[CacheUse] = field(default_factory=list)

    def projection(self) -> list[ProjectedYear]:
        growth = self.settings.yearly_growth
        received_now = self.total.cost_as_received(self.settings)
        stored_now = self.total.cost_as_stored(self.settings)
        years, cumulative = [], 0.0
        for year in range(1, YEARS + 1):
            factors = [(1 + growth) ** (m / 12) for m in range(12 * (year - 1) + 1, 12 * year + 1)]
            as_received, as_stored = received_now * sum(factors), stored_now * sum(factors)
            cumulative += as_received - as_stored
            end = (1 + growth) ** year
            years.append(
                ProjectedYear(
                    year,
                    round(self.total.received_bytes * end),
                    round(self.total.stored_bytes * end),
                    as_received,
                    as_stored,
                    as_received - as_stored,
                    cumulative,
                )
            )
        return years

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        total = self.total.to_json(s)
        received, stored = self.total.cost_as_received(s), self.total.cost_as_stored(s)
        return {
            "currency": s.currency,
            "prices": {
                "per_tb_month": s.price_per_tb_month,
                "cold_per_tb_month": s.cold_price_per_tb_month,
                "tb_bytes": TB,
                "source": PRICE_SOURCE,
            },
            "yearly_growth": s.yearly_growth,
            "totals": total,
            "by_modality": [
                {"modality": modality, **figures.to_json(s)}
                for modality, figures in sorted(self.by_modality.items(), key=lambda kv: -kv[1].stored_bytes)
            ],
            "by_month": [{"month": month, **f.to_json(s)} for month, f in sorted(self.by_month.items())],
            "by_modality_month": [
                {"modality": modality, "month": month, **f.to_json(s)}
                for (modality, month), f in sorted(self.by_modality_month.items(), key=lambda kv: kv[0][::-1])
            ],
            "money": {
                "per_month_as_received": (received),
                "per_month_as_stored": (stored),
                "per_month_uncompressed": (self.total.uncompressed_bytes / TB * s.price_per_tb_month),
                "saving_per_month": (received - stored),
                "saving_percent": None if received == 0 else round(100 * (received - stored) / received, 1),
            },
            "projection": [
                {
                    "year": y.year,
                    "received_bytes": y.received_bytes,
                    "stored_bytes": y.stored_bytes,
                    "cost_as_received": (y.cost_as_received),
                    "cost_as_stored": (y.cost_as_stored),
                    "saving": (y.saving),
                    "cumulative_saving": (y.cumulative_saving),
                }
                for y in self.projection()
            ],
            "caches": {
                "bytes": sum(c.bytes for c in self.caches),
                "note": "disk used by this server's caches, not counted in stored_bytes",
                "folders": [asdict(c) for c in self.caches],
            },
        }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def _digit(text: ColumnElement[Any], position: int) -> ColumnElement[bool]:
    return func.substr(text, position, 1).between("0", "9")


def month_of(engine: AsyncEngine) -> ColumnElement[str]:
    """``YYYYMM`` of the study's StudyDate when it starts with a plausible year and month (DA is YYYYMMDD;
    a malformed value, such as ACR-NEMA's YYYY.MM.DD, does not count), else of the instance's receipt (UTC).
    Built from substr and BETWEEN only, the same on SQLite and PostgreSQL."""
    date = S.c.study_date
    valid = and_(
        *(_digit(date, p) for p in range(1, 7)),
        func.substr(date, 5, 2).between("01", "12"),
        func.substr(date, 1, 1).between("1", "2"),
    )
    if engine.dialect.name == "postgresql":
        received = func.to_char(func.timezone("UTC", func.to_timestamp(I.c.created_at)), "YYYYMM")
    else:
        received = func.strftime("%Y%m", I.c.created_at, "unixepoch")
    return case((valid, func.substr(date, 1, 6)), else_=received)


def _sums() -> list[Any]:
    return [
        func.count().label("instances"),
        func.count(func.distinct(I.c.study_uid)).label("studies"),
        func.coalesce(func.sum(I.c.received_size), 0).label("received"),
        func.coalesce(func.sum(I.c.size), 0).label("stored"),
        func.coalesce(func.sum(I.c.pixel_bytes), 0).label("uncompressed"),
        func.coalesce(func.sum(case((I.c.tier == "cold", I.c.size), else_=literal(0))), 0).label("cold"),
    ]


def _figures(row: Any) -> Figures:
    return Figures(
        int(row.studies),
        int(row.instances),
        int(row.received),
        int(row.stored),
        int(row.uncompressed),
        int(row.cold),
    )


def _label(month: str | None) -> str:
    return f"{month[:4]}-{month[4:6]}" if month and len(month) >= 6 else "unknown"


async def storage_stats(engine: AsyncEngine, settings: Settings) -> StorageStats:
    """The archive's figures by modality and month, with money, projection and cache use (module doc)."""
    month = month_of(engine).label("month")
    modality = SE.c.modality.label("modality")
    joined = I.join(SE, SE.c.series_uid == I.c.series_uid).join(S, S.c.study_uid == I.c.study_uid)
    # Two scans of the instances: the sums by (modality, month), and the distinct study counts by month,
    # which cannot be added up from the finer groups (a study with CT and SR series counts once a month).
    # Studies per modality and in all come from the series and studies tables (a fraction of the rows).
    both = select(modality, month, *_sums()).select_from(joined).group_by(modality, month)
    months = select(month, func.count(func.distinct(I.c.study_uid)).label("studies")).select_from(joined)
    modalities = (
        select(modality, func.count(func.distinct(SE.c.study_uid)).label("studies"))
        .where(SE.c.num_instances > 0)
        .group_by(modality)
    )
    async with engine.connect() as conn:
        groups = (await conn.execute(both)).all()
        month_studies = {r.month: r.studies for r in (await conn.execute(months.group_by(month))).all()}
        modality_studies = {r.modality: r.studies for r in (await conn.execute(modalities)).all()}
        all_studies = (
            await conn.execute(select(func.count()).select_from(S).where(S.c.num_instances > 0))
        ).scalar_one()

    by_pair: dict[tuple[str, str], Figures] = {}
    by_modality: dict[str, Figures] = {}
    by_month: dict[str, Figures] = {}
    total = Figures(studies=int(all_studies))
    for row in groups:
        figures = _figures(row)
        key = (row.modality or "", _label(row.month))
        by_pair[key] = figures
        in_modality = int(modality_studies.get(row.modality, 0))
        by_modality.setdefault(key[0], Figures(studies=in_modality)).add(figures)
        by_month.setdefault(key[1], Figures(studies=int(month_studies.get(row.month, 0)))).add(figures)
        total.add(figures)
    caches = await asyncio.to_thread(cache_use, settings)
    return StorageStats(settings, total, by_modality, by_month, by_pair, caches)


def cache_use(settings: Settings) -> list[CacheUse]:
    """Bytes and files in each of the server's cache folders (missing folders count as empty)."""
    found = []
    caches = (("decoded frames", settings.decoded_cache_dir), ("HTJ2K frames", settings.htj2k_cache_dir))
    for name, path in caches:
        rel = path.relative_to(settings.data_dir).as_posix()
        size = files = 0
        for folder, _, names in os.walk(path):
            for file_name in names:
                try:
                    size += os.stat(os.path.join(folder, file_name)).st_size
                except OSError:
                    continue  # evicted while we walked
                files += 1
        found.append(CacheUse(name, rel, size, files))
    return found
