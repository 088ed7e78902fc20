"""QIDO-RS matching (PS3.18 8.3.4, PS3.4 C.2.2.2) compiled to SQL, with Python matching as a fallback
for attributes the index has no column for."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import Integer, and_, bindparam, column, exists, func, or_, select, table, true
from sqlalchemy.sql import ColumnElement

from storage import schema
from storage.dicom_file import BASE_PLACEHOLDER
from storage.errors import BadRequest
from storage.index import Index
from storage.tags import parse_attribute, tag_hex, vr_of
from storage.uids import is_valid_uid
from storage.values import json_values, normalize_date, normalize_datetime, normalize_time

Level = Literal["study", "series", "instance"]
S, SE, I = schema.studies, schema.series, schema.instances
MONTHS, DAYS = schema.study_month_counts, schema.study_day_counts

INT64_MAX = 2**63 - 1  # SQL BIGINT (SQLite and PostgreSQL)
MAX_RESULTS = 1000  # what one response returns when the client sets no limit (with a Warning)
# How far past a page the "how many more" count looks: counting every match on every request is a scan.
# About one more page of OHIF's study list (limit=101): at 1000, counting studies of one modality out of
# eight cost PostgreSQL twice the page itself at 100,000 studies.
MORE_RESULTS_CAP = 100

MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056

# Attributes with a column: tag -> (level, column).
COLUMNS: dict[int, tuple[Level, Any]] = {
    0x00100010: ("study", S.c.patient_name),
    0x00100020: ("study", S.c.patient_id),
    0x00100030: ("study", S.c.patient_birth_date),
    0x00100040: ("study", S.c.patient_sex),
    0x00080020: ("study", S.c.study_date),
    0x00080030: ("study", S.c.study_time),
    0x00080050: ("study", S.c.accession_number),
    0x00200010: ("study", S.c.study_id),
    0x00081030: ("study", S.c.study_description),
    0x00080090: ("study", S.c.referring_physician_name),
    0x0020000D: ("study", S.c.study_uid),
    MODALITIES_IN_STUDY: ("study", S.c.modalities),
    SOP_CLASSES_IN_STUDY: ("study", S.c.sop_classes),
    0x00080060: ("series", SE.c.modality),
    0x00200011: ("series", SE.c.series_number),
    0x0008103E: ("series", SE.c.series_description),
    0x00080021: ("series", SE.c.series_date),
    0x00080031: ("series", SE.c.series_time),
    0x00400244: ("series", SE.c.pps_start_date),
    0x00400245: ("series", SE.c.pps_start_time),
    0x0020000E: ("series", SE.c.series_uid),
    0x00080016: ("instance", I.c.sop_class_uid),
    0x00080018: ("instance", I.c.sop_uid),
    0x00200013: ("instance", I.c.instance_number),
}
MULTI_VALUED_COLUMNS = {MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY}

DEFAULTS: dict[Level, tuple[int, ...]] = {
    "study": (
        0x00080005,
        0x00080020,
        0x00080030,
        0x00080050,
        INSTANCE_AVAILABILITY,
        MODALITIES_IN_STUDY,
        0x00080090,
        0x00080201,
        RETRIEVE_URL,
        0x00100010,
        0x00100020,
        0x00100030,
        0x00100040,
        0x0020000D,
        0x00200010,
        0x00201206,
        0x00201208,
    ),
    "series": (
        0x00080005,
        0x00080060,
        0x00080201,
        0x0008103E,
        RETRIEVE_URL,
        0x0020000D,
        0x0020000E,
        0x00200011,
        0x00201209,
        0x00400244,
        0x00400245,
        0x00400275,
    ),
    "instance": (
        0x00080005,
        0x00080016,
        0x00080018,
        INSTANCE_AVAILABILITY,
        0x00080201,
        RETRIEVE_URL,
        0x0020000D,
        0x0020000E,
        0x00200013,
        0x00280010,
        0x00280011,
        0x00280100,
        0x00280008,
    ),
}
LEVEL_OF = {0x0020000D: "study", 0x0020000E: "series", 0x00080018: "instance"}


class QueryError(BadRequest, ValueError):
    """A query the client got wrong; str() is the reason."""


@dataclass
class Filter:
    tag: int
    value: str


@dataclass
class Query:
    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    filters: list[Filter] = field(default_factory=list)
    include_all: bool = False
    includes: set[int] = field(default_factory=set)
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


def scope_query(study: str, series: str | None) -> Query:
    """A query that matches the study (or its series) itself: does it exist?"""
    q = Query(level="series" if series else "study", limit=1)
    q.filters.append(Filter(0x0020000D, study))
    if series:
        q.filters.append(Filter(0x0020000E, series))
    return q


def _parse_int(name: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise QueryError(f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise QueryError(f"{name} must be at least {minimum}, got {n}")
    if n > INT64_MAX:  # SQL integers are 64-bit: a larger one would be an OverflowError (500)
        raise QueryError(f"{name} must be at most {INT64_MAX}, got {value[:30]!r}")
    return n


def _attribute(name: str) -> int:
    # Nested paths (00400275.00401001) name the top-level sequence for return purposes.
    first = name.split(".")[0]
    tag = parse_attribute(first)
    if tag is None:
        raise QueryError(f"unknown attribute {name!r}: not a DICOM keyword or tag")
    return tag


def parse_query(
    level: Level, params: list[tuple[str, str]], study_uid: str | None = None, series_uid: str | None = None
) -> Query:
    q = Query(level=level, study_uid=study_uid, series_uid=series_uid)
    for name, value in params:
        key = name.strip()
        low = key.lower()
        if low == "limit":
            q.limit = _parse_int("limit", value, 0)
        elif low == "offset":
            q.offset = _parse_int("offset", value, 0)
        elif low == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, got {value!r}")
            q.fuzzy = value.lower() == "true"
        elif low == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item.lower() == "all":
                    q.include_all = True
                else:
                    q.includes.add(_attribute(item))
        elif low == "orderby":
            continue  # optional in PS3.18; results come in a stable, documented order
        elif "." in key:
            raise QueryError(f"matching on nested attribute {key!r} is not supported")
        else:
            tag = _attribute(key)
            if tag in LEVEL_OF and value:
                for uid in re.split(r"[,\\]", value):
                    if not is_valid_uid(uid.strip()):
                        raise QueryError(f"malformed UID in {key}: {uid!r}")
            _check_value(key, tag, value)
            q.filters.append(Filter(tag, value))
    return q


def _check_value(name: str, tag: int, value: str) -> None:
    vr = vr_of(tag)
    if not value or "*" in value or "?" in value:
        return
    if vr == "DA":
        if value.count("-") > 1 or value.strip() == "-":
            raise QueryError(f"{name}: malformed date range {value!r}")
        for part in value.split("-"):
            if part.strip() and not _is_date(part.strip().replace(".", "")):
                raise QueryError(f"{name}: {part.strip()!r} is not a date (YYYYMMDD)")
    elif vr == "TM":
        for part in value.split("-"):
            if part and not re.fullmatch(r"\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?", part.strip()):
                raise QueryError(f"{name}: malformed time or range {value!r}")
    elif vr in ("IS", "US", "SS", "UL", "SL"):
        for part in re.split(r"[,\\]", value):
            if not re.fullmatch(r"[+-]?\d+", part.strip()):
                raise QueryError(f"{name}: expected an integer, got {value!r}")
            if abs(int(part)) > INT64_MAX:
                raise QueryError(f"{name}: {part.strip()[:30]!r} is beyond a 64-bit integer")


def _is_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


# ---- SQL compilation ---------------------------------------------------------------------------------


def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in "%_!":
            out.append("!" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _literal_prefix(value: str) -> str:
    """The characters before the first wildcard."""
    cut = min((i for i, c in enumerate(value) if c in "*?"), default=len(value))
    return value[:cut]


def _after_prefix(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix``, in code point order (which is
    UTF-8 byte order: SQLite's BINARY and PostgreSQL's "C" collation); None when there is none."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(0xE000 if last + 1 == 0xD800 else last + 1)  # skip surrogates
        prefix = prefix[:-1]
    return None


def _wildcard_match(col, value: str, *, trigram: bool = False) -> ColumnElement:
    """Case-sensitive PS3.4 wildcard matching on a byte-ordered column (SQLite, or COLLATE "C" on
    PostgreSQL), with the literal prefix also given as a range: an index then serves it on both databases,
    whatever the driver does with a bound LIKE pattern. `trigram`: SQLite's trigram index (migration 0006)
    exists."""
    if not value.strip("*"):
        return true()  # only "*": universal
    like = col.like(_like_pattern(value), escape="!")
    prefix = _literal_prefix(value)
    if not prefix:
        if col.table is S and col.name in INFIX_COVERED:
            if trigram and _has_trigram(value):
                # The trigram index finds the candidates (FTS5 takes no ESCAPE, hence plain literals only,
                # and may fold case); the LIKE on the row decides.
                found = select(STUDY_KEYS.c.study_uid).where(
                    STUDY_KEYS.c.id.in_(
                        select(STUDIES_TRIGRAM.c.rowid).where(
                            STUDIES_TRIGRAM.c[col.name].like(_like_pattern(value))
                        )
                    )
                )
                return and_(S.c.study_uid.in_(found), like)
            # Nothing to seek: test every value, on the (value, study_uid) index's entries rather than on
            # the studies' rows (much smaller on SQLite; on PostgreSQL a trigram index answers the LIKE).
            covered = S.alias(f"infix_{col.name}")
            return S.c.study_uid.in_(
                select(covered.c.study_uid).where(covered.c[col.name].like(_like_pattern(value), escape="!"))
            )
        return like
    conds = [col >= prefix, like]
    if (upper := _after_prefix(prefix)) is not None:
        conds.insert(1, col < upper)
    return and_(*conds)


def _range(value: str, norm_lo, norm_hi) -> tuple[str, str]:
    lo, _, hi = value.partition("-")
    return (norm_lo(lo) if lo.strip() else ""), (norm_hi(hi) if hi.strip() else "")


def _text_condition(col, value: str, *, ci: bool) -> ColumnElement:
    if "*" in value or "?" in value:
        pattern = _like_pattern(value)
        return col.ilike(pattern, escape="!") if ci else col.like(pattern, escape="!")
    return func.lower(col) == value.lower() if ci else col == value


def _fuzzy_name(col, value: str) -> ColumnElement:
    """Case-insensitive prefix match of any name component (family, given, middle...)."""
    if col is S.c.patient_name:
        stem = value.rstrip("*").lower()
        ci = S.c.patient_name_ci
        pattern = _like_pattern(stem)
        return or_(
            _wildcard_match(ci, stem + "*"),
            ci.like(f"% {pattern}%", escape="!"),
            ci.like(f"%^{pattern}%", escape="!"),
        )
    stem = _like_pattern(value.rstrip("*"))
    return or_(
        col.ilike(f"{stem}%", escape="!"),
        col.ilike(f"% {stem}%", escape="!"),
        col.ilike(f"%^{stem}%", escape="!"),
    )


# Text columns compared byte-wise (prefix wildcards become index ranges), and person names with a
# lower-cased copy for case-insensitive matching.
BYTEWISE_COLUMNS = {0x00100020: S.c.patient_id, 0x00080050: S.c.accession_number}
INFIX_COVERED = {"patient_id", "patient_name_ci"}  # indexed as (column, study_uid)
# SQLite's trigram index of those two columns and its stable keys (migration 0006; not in schema.py).
STUDY_KEYS = table("study_keys", column("id"), column("study_uid"))
STUDIES_TRIGRAM = table("studies_trigram", column("rowid"), column("patient_id"), column("patient_name_ci"))


def _has_trigram(value: str) -> bool:
    """Whether an FTS5 trigram index can serve the pattern: three literal characters in a row, none of
    them a LIKE wildcard or escape."""
    return not any(c in value for c in "%_!") and any(len(run) >= 3 for run in re.split(r"[*?]", value))


CASE_FOLDED = {0x00100010: S.c.patient_name_ci}


def _column_condition(tag: int, col, value: str, fuzzy: bool, trigram: bool = False) -> ColumnElement | None:
    if value.strip("*") == "":
        return None  # universal matching ("" or "*"): return the attribute, match everything
    vr = vr_of(tag)
    if tag in LEVEL_OF or vr == "UI":
        uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
        return col.in_(uids)
    if tag == MODALITIES_IN_STUDY:
        # Any series of the study has one of the modalities, checked per study through the series index
        # (study_uid, ...) as the study list is walked in its order: a page costs about limit / (share of
        # studies with that modality) checks, where the backslash-joined column needed four LIKEs per row.
        # (An IN over the (modality, study_uid) index would fetch and sort every study of a common modality.)
        values = [x.strip() for x in re.split(r"[,\\]", value) if x.strip()]
        if any(not v.strip("*") for v in values):
            return None  # "*" matches every study, with or without a modality
        series = SE.alias("modality_series")
        matches = [
            _wildcard_match(series.c.modality, v) if "*" in v or "?" in v else series.c.modality == v
            for v in values
        ]
        return exists().where(series.c.study_uid == col.table.c.study_uid, or_(*matches))
    if tag in MULTI_VALUED_COLUMNS:
        # Backslash-joined values: match any one of them; a list in the query means any of those.
        conds = []
        for v in (x.strip() for x in re.split(r"[,\\]", value) if x.strip()):
            p = _like_pattern(v)
            conds += [
                col.like(p, escape="!"),
                col.like(p + "\\%", escape="!"),
                col.like("%\\" + p, escape="!"),
                col.like("%\\" + p + "\\%", escape="!"),
            ]
        return or_(*conds)
    if vr == "DA" and "-" in value:
        lo, hi = _range(value, normalize_date, normalize_date)
        conds = [col != ""]
        if lo:
            conds.append(col >= lo)
        if hi:
            conds.append(col <= hi)
        return and_(*conds)
    if vr == "DA" and "*" not in value and "?" not in value:
        return col == normalize_date(value)
    if vr == "TM" and "*" not in value and "?" not in value:
        lo, hi = [*value.split("-", 1), ""][:2] if "-" in value else (value, value)
        conds = [col != ""]
        if lo.strip():
            conds.append(col >= normalize_time(lo))
        if hi.strip():
            conds.append(col <= normalize_time(hi, upper=True))
        return and_(*conds)
    if vr in ("IS", "US", "SS", "UL", "SL"):
        return col.in_([int(v) for v in re.split(r"[,\\]", value)])
    if vr == "PN":
        if fuzzy:
            return _fuzzy_name(col, value)
        if tag in CASE_FOLDED:
            folded = CASE_FOLDED[tag]
            if "*" in value or "?" in value:
                return _wildcard_match(folded, value.lower(), trigram=trigram)
            return folded == value.lower()
        return _text_condition(col, value, ci=True)
    if tag in BYTEWISE_COLUMNS and ("*" in value or "?" in value):
        return _wildcard_match(col, value, trigram=trigram)
    return _text_condition(col, value, ci=False)


# ---- Python matching for attributes without a column ------------------------------------------------


def _wild_regex(value: str, ci: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ci else re.DOTALL)


def _python_match(tag: int, attrs: dict[str, Any], value: str, fuzzy: bool) -> bool:
    if value == "":
        return True
    values = json_values(attrs, tag_hex(tag))
    vr = vr_of(tag)
    if vr in ("DA", "DT", "TM") and "-" in value and "*" not in value:
        norm = {
            "DA": (normalize_date, normalize_date),
            "TM": (normalize_time, lambda v: normalize_time(v, upper=True)),
            "DT": (normalize_datetime, lambda v: normalize_datetime(v, upper=True)),
        }[vr]
        lo, hi = _range(value, *norm)
        return any(v and (not lo or norm[0](v) >= lo) and (not hi or norm[0](v) <= hi) for v in values)
    if vr == "UI":
        wanted = {u.strip() for u in re.split(r"[,\\]", value)}
        return any(v in wanted for v in values)
    if vr == "PN" and fuzzy:
        stem = value.rstrip("*").lower()
        return any(any(w.startswith(stem) for w in re.split(r"[ ^=]", v.lower())) for v in values)
    rx = _wild_regex(value, ci=vr == "PN")
    return any(rx.fullmatch(v) for v in values)


# ---- running a query ---------------------------------------------------------------------------------

LEVEL_TABLE = {"study": S, "series": SE, "instance": I}
LEVEL_KEY = {"study": S.c.study_uid, "series": SE.c.series_uid, "instance": I.c.sop_uid}


# Computed attributes of the parent levels, selected along with each result: PS3.18 10.6.3.3.2 and
# 10.6.3.3.3 return the Study attributes of Table 10.6.3-3 with every result of a search for all series
# or all instances, and the Series attributes of Table 10.6.3-4 with a search for instances not scoped to
# a series; a few of those (ModalitiesInStudy, the counts) have no stored value, only a column.
STUDY_COMPUTED = (
    S.c.modalities.label("study_modalities"),
    S.c.sop_classes.label("study_sop_classes"),
    S.c.num_series.label("study_num_series"),
    S.c.num_instances.label("study_num_instances"),
)
SERIES_COMPUTED = (SE.c.num_instances.label("series_num_instances"),)


def _from_clause(q: Query):
    if q.level == "study":
        return S
    if q.level == "series":
        return SE.join(S, SE.c.study_uid == S.c.study_uid)
    return I.join(SE, I.c.series_uid == SE.c.series_uid).join(S, I.c.study_uid == S.c.study_uid)


def _base_select(q: Query):
    cols: list[ColumnElement[Any]]
    if q.level == "study":
        cols = [S.c.study_uid, S.c.attrs, S.c.modalities, S.c.sop_classes, S.c.num_series, S.c.num_instances]
        return select(*cols).select_from(_from_clause(q)), [S]
    if q.level == "series":
        cols = [
            SE.c.study_uid,
            SE.c.series_uid,
            SE.c.attrs,
            SE.c.num_instances,
            S.c.attrs.label("study_attrs"),
            *STUDY_COMPUTED,
        ]
        return select(*cols).select_from(_from_clause(q)), [SE, S]
    cols = [
        I.c.study_uid,
        I.c.series_uid,
        I.c.sop_uid,
        I.c.attrs,
        I.c.number_of_frames,
        SE.c.attrs.label("series_attrs"),
        S.c.attrs.label("study_attrs"),
        *STUDY_COMPUTED,
        *SERIES_COMPUTED,
    ]
    return select(*cols).select_from(_from_clause(q)), [I, SE, S]


def _order(q: Query):
    if q.level == "study":
        return [S.c.study_date.desc(), S.c.study_time.desc(), S.c.study_uid]
    if q.level == "series":
        return [SE.c.study_uid, SE.c.series_number, SE.c.series_uid]
    return [I.c.study_uid, I.c.series_uid, I.c.instance_number, I.c.sop_uid]


LEVEL_RANK = {"study": 0, "series": 1, "instance": 2}


class MoreResults(int):
    """How many results match beyond a page: exact up to ``MORE_RESULTS_CAP``; beyond that the count
    stops (counting every match on every request would scan them) and the number reads "more than N"
    wherever it is formatted, so the Warning header built from it stays true."""

    capped: bool = False

    @classmethod
    def at_least(cls, n: int) -> MoreResults:
        more = cls(n)
        more.capped = True
        return more

    def __format__(self, spec: str) -> str:
        text = format(int(self), spec)
        return f"more than {text}" if self.capped else text

    __str__ = __repr__ = lambda self: format(self, "")  # type: ignore[assignment]


async def run_query(
    index: Index, q: Query, *, visible_studies: Any = None
) -> tuple[list[dict[str, Any]], int]:
    """Matching results as DICOM JSON dicts, and how many more matched beyond this page (a ``MoreResults``:
    exact up to ``MORE_RESULTS_CAP``). `visible_studies`, when given, is a subquery of the study UIDs the
    caller may see (storage/access_labels.py)."""
    stmt, _tables = _base_select(q)
    conds: list[ColumnElement[bool]] = []
    if visible_studies is not None:
        conds.append(LEVEL_TABLE[q.level].c.study_uid.in_(visible_studies))
    if q.study_uid:
        conds.append(LEVEL_TABLE[q.level].c.study_uid == q.study_uid)
    if q.series_uid:
        conds.append(LEVEL_TABLE[q.level].c.series_uid == q.series_uid)
    leftovers: list[Filter] = []
    for f in q.filters:
        mapped = COLUMNS.get(f.tag)
        if mapped and LEVEL_RANK[mapped[0]] <= LEVEL_RANK[q.level]:
            cond = _column_condition(f.tag, mapped[1], f.value, q.fuzzy, index.trigram)
            if cond is not None:
                conds.append(cond)
        elif f.value != "":
            leftovers.append(f)
    stmt = stmt.where(*conds).order_by(*_order(q))
    limit = q.limit if q.limit is not None else MAX_RESULTS
    async with index.engine.connect() as conn:
        if not leftovers:
            return await _page(conn, q, conds, limit)
        rows = (await conn.execute(stmt)).all()
    matched = []
    for r in rows:
        attrs = _merged_attrs(q, r)
        if all(_python_match(f.tag, attrs, f.value, q.fuzzy) for f in leftovers):
            matched.append(r)
    page = matched[q.offset : q.offset + limit]
    return [_result(q, r) for r in page], MoreResults(max(0, len(matched) - q.offset - limit))


async def _page(
    conn: Any, q: Query, conds: list[ColumnElement[bool]], limit: int
) -> tuple[list[dict[str, Any]], MoreResults]:
    """A page of matches in result order, and how many more there are (exact up to ``MORE_RESULTS_CAP``).

    The page is found by keys alone, along the order's index (a deep offset skips index entries, not rows;
    otherwise PostgreSQL may sort the whole table), in one walk that also takes the keys of up to
    ``MORE_RESULTS_CAP`` further matches: the Warning's count then costs no second query walking past the
    offset again, and counting every match (a scan) is never needed. Only the page's rows are read, by
    key."""
    key = LEVEL_KEY[q.level]
    skip: Any = q.offset
    params = {}
    if q.level == "study" and not conds and q.offset >= DAY_SKIP_MIN:
        conds, skip = _skip_days()
        params["skip_offset"] = q.offset
    walk = (
        select(key)
        .select_from(_from_clause(q))
        .where(*conds)
        .order_by(*_order(q))
        .offset(skip)
        .limit(limit + MORE_RESULTS_CAP + 1)
    )
    found = list((await conn.execute(walk, params)).scalars())
    page, further = found[:limit], len(found) - limit
    rows: list[Any] = []
    for start in range(0, len(page), KEYS_PER_STATEMENT):
        chunk = page[start : start + KEYS_PER_STATEMENT]
        rows += (await conn.execute(_base_select(q)[0].where(key.in_(chunk)))).all()
    position = {k: i for i, k in enumerate(page)}
    rows.sort(key=lambda r: position[getattr(r, key.name)])
    if further > MORE_RESULTS_CAP:
        remaining = MoreResults.at_least(MORE_RESULTS_CAP)
    else:
        remaining = MoreResults(max(0, further))
    return [_result(q, r) for r in rows], remaining


# From this offset on, the whole study list's page is found through the month and day counts
# (_skip_days): walking fewer index entries costs less than summing them.
DAY_SKIP_MIN = 2000


@functools.cache  # built once: its offset is a parameter, `skip_offset`
def _skip_days() -> tuple[list[ColumnElement[bool]], Any]:
    """Where entry number `skip_offset` of the newest-first study list lies, from the per-month and per-day
    study counts (migration 0009): the month it falls in, then the day in that month; the walk starts at
    that day and skips only the studies of that day before it. The counts are subqueries of the walk's
    own statement, so they and the studies are read from one snapshot, and agree even while other
    transactions commit."""
    offset = bindparam("skip_offset", type_=Integer)
    month = _first_reaching(MONTHS.c.month, MONTHS.c.studies, offset, "month_anchor")
    month_before = select(month.c.before).scalar_subquery()
    in_month = select(DAYS).where(DAYS.c.month == select(month.c.key).scalar_subquery()).subquery()
    day = _first_reaching(in_month.c.study_date, in_month.c.studies, offset, "day_anchor", month_before)
    # Past the last study there is no such day: the condition is then false and the page empty.
    day_key = select(day.c.key).scalar_subquery()
    return [S.c.study_date <= day_key], func.coalesce(offset - select(day.c.before).scalar_subquery(), 0)


def _first_reaching(key: Any, studies: Any, offset: Any, name: str, before: Any = 0) -> Any:
    """The first `key`, newest first, whose studies (with those of the keys before it, and `before`
    more) reach past `offset`, and how many studies come before it: a one-row CTE (key, before)."""
    upto = before + func.sum(studies).over(order_by=key.desc())
    running = select(key.label("key"), studies.label("studies"), upto.label("upto")).subquery()
    return (
        select(running.c.key, (running.c.upto - running.c.studies).label("before"))
        .where(running.c.upto > offset)
        .order_by(running.c.key.desc())
        .limit(1)
        .cte(name)  # read twice, computed once
    )


# Keys bound in one IN list (SQLite allows 32,766 bound values; PostgreSQL 65,535).
KEYS_PER_STATEMENT = 1000


def _merged_attrs(q: Query, r: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if q.level != "study":
        attrs.update(orjson.loads(r.study_attrs))
    if q.level == "instance":
        attrs.update(orjson.loads(r.series_attrs))
    attrs.update(orjson.loads(r.attrs))
    return attrs


def _wanted_tags(q: Query) -> set[int]:
    wanted = set(DEFAULTS[q.level]) | q.includes | {f.tag for f in q.filters}
    # PS3.18 10.6.3.3.2-3: a search for all series or all instances also returns each result's Study
    # attributes (Table 10.6.3-3), and a search for instances not scoped to a series its Series
    # attributes (Table 10.6.3-4). Each result keeps its own Retrieve URL.
    if q.level != "study" and q.study_uid is None:
        wanted |= set(DEFAULTS["study"]) - {RETRIEVE_URL}
    if q.level == "instance" and q.series_uid is None:
        wanted |= set(DEFAULTS["series"]) - {RETRIEVE_URL}
    return wanted


def _study_computed(
    attrs: dict[str, Any], modalities: str, sop_classes: str, num_series: int, num_instances: int
) -> None:
    attrs[tag_hex(MODALITIES_IN_STUDY)] = _cs(modalities)
    attrs[tag_hex(SOP_CLASSES_IN_STUDY)] = {"vr": "UI", **_values(sop_classes)}
    attrs["00201206"] = {"vr": "IS", "Value": [num_series]}
    attrs["00201208"] = {"vr": "IS", "Value": [num_instances]}


def _result(q: Query, r: Any) -> dict[str, Any]:
    attrs = _merged_attrs(q, r)
    if q.level == "study":
        url = f"{BASE_PLACEHOLDER}/studies/{r.study_uid}"
        _study_computed(attrs, r.modalities, r.sop_classes, r.num_series, r.num_instances)
    else:
        _study_computed(
            attrs, r.study_modalities, r.study_sop_classes, r.study_num_series, r.study_num_instances
        )
    if q.level == "series":
        url = f"{BASE_PLACEHOLDER}/studies/{r.study_uid}/series/{r.series_uid}"
        attrs["00201209"] = {"vr": "IS", "Value": [r.num_instances]}
    elif q.level == "instance":
        url = f"{BASE_PLACEHOLDER}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"
        attrs["00201209"] = {"vr": "IS", "Value": [r.series_num_instances]}
    attrs[tag_hex(RETRIEVE_URL)] = {"vr": "UR", "Value": [url]}
    attrs[tag_hex(INSTANCE_AVAILABILITY)] = {"vr": "CS", "Value": ["ONLINE"]}
    keys = sorted(attrs) if q.include_all else sorted({tag_hex(t) for t in _wanted_tags(q)} & attrs.keys())
    # Attributes without a value are left out: in DICOM JSON an empty attribute has no "Value" (PS3.18
    # F.2.5), and viewers read `Value` without checking (OHIF 3.13's study list fails on a
    # ModalitiesInStudy with no Value, which a study whose instances lack Modality would get).
    return {k: attrs[k] for k in keys if _has_value(attrs[k])}


def _has_value(element: dict[str, Any]) -> bool:
    return bool(element.get("Value")) or "InlineBinary" in element or "BulkDataURI" in element


def _values(joined: str) -> dict[str, Any]:
    values = [v for v in joined.split("\\") if v]
    return {"Value": values} if values else {}


def _cs(joined: str) -> dict[str, Any]:
    return {"vr": "CS", **_values(joined)}
