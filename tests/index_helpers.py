"""Index-level test helpers (issue 14): instances without pixel data parsed as ingest parses them, fresh
databases on SQLite or on the suite's temporary PostgreSQL cluster, and a reference for QIDO matching."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from storage import schema
from storage.dicom_file import ParsedInstance, parse_instance
from storage.index import Index
from storage.query import Query, parse_query, run_query
from storage.values import json_values, normalize_time

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"
_counter = itertools.count()


def make_instance(
    folder: Path,
    *,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    sop_class: str = CT_CLASS,
    **attrs: Any,
) -> ParsedInstance:
    """A small instance (no pixel data) written to ``folder`` and parsed the way ingest parses it."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{next(_counter)}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return parse_instance(path)


def stored(items: list[ParsedInstance]) -> list[tuple[ParsedInstance, str, int]]:
    """(parsed, blob key, size) as Index.store takes them (the blobs themselves are not needed here)."""
    return [(p, f"test/{p.sop_uid}.{uuid.uuid4().hex[:8]}.dcm", 1000) for p in items]


async def new_postgres_database(server_url: str) -> str:
    """A new, empty database on the cluster of ``server_url``; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f"CREATE DATABASE {name}")
    await admin.dispose()
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


async def query(
    index: Index, level: str = "study", study: str | None = None, series: str | None = None, **params: str
) -> tuple[list[dict[str, Any]], int]:
    q: Query = parse_query(level, list(params.items()), study, series)  # type: ignore[arg-type]
    return await run_query(index, q)


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


# ---- a reference for matching and order (PS3.4 C.2.2.2 in plain Python, on every study)
# ----------------------


def _matches(attrs: dict[str, Any], key: str, value: str, fuzzy: bool) -> bool:
    from storage.query import _attribute, _python_match

    tag = _attribute(key)
    if not value.strip("*"):
        return True  # universal matching
    if tag == 0x00080061:  # ModalitiesInStudy: any listed value, each possibly a wildcard
        wanted = [v for v in value.replace("\\", ",").split(",") if v]
        return not wanted or any(_python_match(tag, attrs, v, False) for v in wanted)
    return _python_match(tag, attrs, value, fuzzy)


def reference(all_studies: list[dict[str, Any]], params: dict[str, str]) -> list[str]:
    """Study UIDs matching ``params`` (no paging), newest first, UIDs breaking ties: what QIDO answers."""
    fuzzy = params.get("fuzzymatching") == "true"
    filters = {
        k: v for k, v in params.items() if k not in ("limit", "offset", "fuzzymatching", "includefield")
    }
    hits = [a for a in all_studies if all(_matches(a, k, v, fuzzy) for k, v in filters.items())]

    def first(a: dict[str, Any], tag: str) -> str:
        values = json_values(a, tag)
        return values[0] if values else ""

    hits.sort(key=lambda a: first(a, "0020000D"))
    hits.sort(key=lambda a: (first(a, "00080020"), normalize_time(first(a, "00080030"))), reverse=True)
    return [first(a, "0020000D") for a in hits]


async def day_counts(index: Index) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """The per-month and per-day counts the triggers keep (those left at zero dropped), and the same
    counted from the studies: {("month", YYYYMM) or ("day", StudyDate): studies}."""
    M, D, S = schema.study_month_counts, schema.study_day_counts, schema.studies
    month = func.substr(S.c.study_date, 1, 6)
    async with index.engine.connect() as conn:
        kept = {("month", m): n for m, n in await conn.execute(select(M).where(M.c.studies != 0))}
        kept |= {("day", d): n for _, d, n in await conn.execute(select(D).where(D.c.studies != 0))}
        counted = {
            ("month", m): n for m, n in await conn.execute(select(month, func.count()).group_by(month))
        }
        by_day = select(month, S.c.study_date, func.count()).group_by(S.c.study_date)
        counted |= {("day", d): n for _, d, n in await conn.execute(by_day)}
    return kept, counted


def studies_counted(counts: dict[tuple[str, str], int]) -> int:
    """How many studies the per-day counts of ``day_counts`` add up to."""
    return sum(n for (kind, _), n in counts.items() if kind == "day")
