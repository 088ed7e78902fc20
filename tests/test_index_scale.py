"""The index at scale (issue 14), on SQLite and PostgreSQL: what the indexed queries answer is what PS3.4
matching says (checked against a plain-Python reference on every study), in the documented order, with
paging; study-level values stay right through replacements, deletes and concurrent writers; the
Warning's count of further results is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from storage import query as query_module
from storage import schema
from storage.dicom_file import ParsedInstance
from storage.index import Index
from tests.index_helpers import (
    CT_CLASS,
    MR_CLASS,
    SR_CLASS,
    day_counts,
    make_instance,
    new_postgres_database,
    query,
    reference,
    stored,
    studies_counted,
    uids,
)
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster

# Names and IDs chosen for the cases that differ between SQL and PS3.4: case, non-ASCII case, SQL's own
# wildcards (% and _) as literal characters, empty values, dates and times of varied precision.
PEOPLE = [
    # PatientName, PatientID, AccessionNumber, StudyDate, StudyTime, modalities of its series
    ("Doe^John", "ID1", "ACC1", "20200105", "101500", ["CT", "MR"]),
    ("DOE^JANE", "ID2", "ACC2", "20200105", "0915", ["CT"]),
    ("doe^jim", "id3", "ACC3", "20191231", "", ["MR"]),
    ("Müller^Jörg", "ID_4", "ACC_4", "20210601", "235959.5", ["US"]),
    ("MÜLLER^ANNA", "ID%5", "ACC%5", "20210601", "235959.5", ["US", "SR"]),
    ("O'Brien^Pat", "IDX5", "ACCX5", "", "", ["CR"]),
    ("Rate_100%^Test", "ID-6", "ACC-6", "19991231", "12", ["DX"]),
    ("Ratex100z^Test", "ID6", "ACC6", "19991231", "12", ["DX", "CT"]),
    ("", "", "", "20000101", "000000", [""]),
    ("Smith^Anne^Marie", "SM1", "ACC7", "20230303", "080000", ["MG"]),
    ("van der Berg^Ina", "VB1", "ACC8", "20230303", "080000", ["CT"]),
    ("Zhang^Wei", "ZW1", "ACC9", "20180808", "1530", ["PT", "CT"]),
]

QUERIES = [
    {},
    {"PatientName": "*"},
    {"PatientName": "doe*"},
    {"PatientName": "DOE*"},
    {"PatientName": "Doe^John"},
    {"PatientName": "doe^john"},
    {"PatientName": "*OE*"},
    {"PatientName": "d?e^j*"},
    {"PatientName": "müller*"},
    {"PatientName": "MÜLLER^ANNA"},
    {"PatientName": "Rate_100%*"},
    {"PatientName": "rate_*"},
    {"PatientName": "*%*"},
    {"PatientName": "*_*"},
    {"PatientName": "o'brien*"},
    {"PatientName": "joh", "fuzzymatching": "true"},
    {"PatientName": "ANN", "fuzzymatching": "true"},
    {"PatientName": "der", "fuzzymatching": "true"},
    {"PatientID": "ID*"},
    {"PatientID": "id*"},
    {"PatientID": "ID_*"},
    {"PatientID": "ID%*"},
    {"PatientID": "ID?"},
    {"PatientID": "*5"},
    {"PatientID": "ID1"},
    {"PatientID": "ID_4"},
    # Infix patterns with three literal characters in a row: SQLite's trigram index finds the candidates.
    {"PatientID": "*DX5*"},
    {"PatientID": "*D-6"},
    {"PatientID": "*D_4"},
    {"PatientName": "*ller^*"},
    {"PatientName": "*ÜLLER*"},
    {"PatientName": "*NNE^M*"},
    {"PatientName": "*e_1*"},
    {"AccessionNumber": "ACC%5"},
    {"AccessionNumber": "ACC_*"},
    {"AccessionNumber": "acc*"},
    {"StudyDate": "20200101-20201231"},
    {"StudyDate": "-20000101"},
    {"StudyDate": "20210601-"},
    {"StudyDate": "20200105"},
    {"ModalitiesInStudy": "CT"},
    {"ModalitiesInStudy": "MR"},
    {"ModalitiesInStudy": "CT,US"},
    {"ModalitiesInStudy": "C*"},
    {"ModalitiesInStudy": "*"},
    {"ModalitiesInStudy": "SR"},
    {"ModalitiesInStudy": "CT", "StudyDate": "20180101-20201231"},
    {"ModalitiesInStudy": "CT", "PatientName": "doe*"},
]


@pytest.fixture(params=["sqlite", "postgres"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Index]:
    async for ix in _index(request.param, request, tmp_path):
        yield ix


@pytest.fixture
async def pg_index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Index]:
    """PostgreSQL only: where writers run at once (SQLite has one writer at a time)."""
    async for ix in _index("postgres", request, tmp_path):
        yield ix


async def _index(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Index]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = await new_postgres_database(request.getfixturevalue("postgres"))
    ix = Index(url)
    await ix.create()
    yield ix
    await ix.close()


def people(folder: Path) -> list[ParsedInstance]:
    """One study per person, a series per modality (two instances in the first), each its own date."""
    items = []
    for i, (name, pid, acc, date, time, modalities) in enumerate(PEOPLE):
        study = f"1.2.826.0.1.3680043.10.1414.7.{i + 1}"
        for n, modality in enumerate(modalities):
            series = generate_uid()
            for k in range(2 if n == 0 else 1):
                attrs = {
                    "PatientName": name,
                    "PatientID": pid,
                    "AccessionNumber": acc,
                    "StudyDate": date,
                    "StudyTime": time,
                    "Modality": modality,
                    "SeriesNumber": str(n + 1),
                    "InstanceNumber": str(k + 1),
                }
                sop_class = {"MR": MR_CLASS, "SR": SR_CLASS}.get(modality, CT_CLASS)
                items.append(make_instance(folder, study=study, series=series, sop_class=sop_class, **attrs))
    return items


async def _archive(index: Index, folder: Path) -> list[str]:
    items = people(folder)
    await index.store(stored(items))
    return list(dict.fromkeys(p.study_uid for p in items))


async def test_matching_and_order_agree_with_ps34(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deep pages read their rows by key in several statements when the page is long: make them short.
    monkeypatch.setattr(query_module, "KEYS_PER_STATEMENT", 2)
    await _archive(index, tmp_path)
    everything, _ = await query(index, includefield="all", limit="1000")
    assert len(everything) == len(PEOPLE)
    for params in QUERIES:
        expected = reference(everything, params)
        results, more = await query(index, **params)
        assert uids(results) == expected, params
        assert more == 0
        # Paging: any window of the same answer, and the count of what follows it.
        for offset, limit in ((0, 2), (1, 3), (3, 2), (len(expected), 5)):
            page, more = await query(index, **params, offset=str(offset), limit=str(limit))
            assert uids(page) == expected[offset : offset + limit], (params, offset, limit)
            assert more == max(0, len(expected) - offset - limit), (params, offset, limit)


async def test_series_and_instances_in_order(index: Index, tmp_path: Path) -> None:
    studies = await _archive(index, tmp_path)
    series, _ = await query(index, "series", studies[0])
    assert [s["00080060"]["Value"][0] for s in series] == ["CT", "MR"]  # by SeriesNumber
    instances, _ = await query(index, "instance", studies[0])
    numbers = [(i["0020000E"]["Value"][0], i["00200013"]["Value"][0]) for i in instances]
    assert numbers == sorted(numbers)
    ct, _ = await query(index, "series", Modality="CT", limit="100")
    assert len(ct) == sum(m.count("CT") for *_, m in PEOPLE)
    page, more = await query(index, "series", Modality="CT", limit="2", offset="1")
    assert uids(page, "0020000E") == uids(ct, "0020000E")[1:3] and more == len(ct) - 3


async def _study_values(index: Index, study: str) -> tuple[int, int, str, str] | None:
    S = schema.studies
    async with index.engine.connect() as conn:
        row = (
            await conn.execute(
                select(S.c.num_series, S.c.num_instances, S.c.modalities, S.c.sop_classes).where(
                    S.c.study_uid == study
                )
            )
        ).first()
    return None if row is None else tuple(row)  # type: ignore[return-value]


async def _recounted(index: Index, study: str) -> tuple[int, int, str, str] | None:
    """The same values computed from the rows below the study."""
    I, SE = schema.instances, schema.series
    async with index.engine.connect() as conn:
        n_inst = (await conn.execute(select(func.count()).where(I.c.study_uid == study))).scalar_one()
        series = (await conn.execute(select(SE.c.modality).where(SE.c.study_uid == study))).scalars().all()
        classes = (
            await conn.execute(select(I.c.sop_class_uid).where(I.c.study_uid == study).distinct())
        ).scalars()
        classes = sorted(classes)
    if not n_inst:
        return None
    return len(series), n_inst, "\\".join(sorted({m for m in series if m})), "\\".join(classes)


async def test_study_values_follow_replacements_and_deletes(index: Index, tmp_path: Path) -> None:
    study, other = generate_uid(), generate_uid()
    ct, mr = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(5)]
    items = [make_instance(tmp_path, study=study, series=ct, sop=s, Modality="CT") for s in sops[:3]]
    items += [
        make_instance(tmp_path, study=study, series=mr, sop=s, sop_class=MR_CLASS, Modality="MR")
        for s in sops[3:]
    ]
    await index.store(stored(items))
    assert await _study_values(index, study) == (2, 5, "CT\\MR", f"{CT_CLASS}\\{MR_CLASS}")

    # The same SOP Instance stored again, now in another study and as an SR: it moves, both studies change.
    moved = make_instance(tmp_path, study=other, sop=sops[3], sop_class=SR_CLASS, Modality="SR")
    stale, replaced = await index.store(stored([moved]))
    assert replaced == {sops[3]} and len(stale) == 1
    assert await _study_values(index, study) == (2, 4, "CT\\MR", f"{CT_CLASS}\\{MR_CLASS}")
    assert await _study_values(index, other) == (1, 1, "SR", SR_CLASS)
    (found,), _ = await query(index, ModalitiesInStudy="SR")
    assert uids([found]) == [other]

    # Deleting the last MR instance drops the series and MR from the study.
    assert len(await index.delete(study, mr, sops[4])) == 1
    assert await _study_values(index, study) == (1, 3, "CT", CT_CLASS)
    assert (await query(index, ModalitiesInStudy="MR", StudyInstanceUID=study))[0] == []
    results, _ = await query(index, StudyInstanceUID=study)
    assert results[0]["00201206"]["Value"] == [1] and results[0]["00201208"]["Value"] == [3]

    assert len(await index.delete(study, ct)) == 3
    assert await _study_values(index, study) is None
    assert await _study_values(index, other) == (1, 1, "SR", SR_CLASS)
    async with index.engine.connect() as conn:  # no job is left for a deleted instance
        jobs = (await conn.execute(select(schema.master_jobs.c.sop_uid))).scalars().all()
    assert set(jobs) == {sops[3]}


async def test_more_results_count_is_bounded(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_module, "MORE_RESULTS_CAP", 3)
    study_uids = await _archive(index, tmp_path)
    n = len(study_uids)
    for limit, offset, expected, text in (
        (2, 0, 3, "more than 3"),
        (n - 3, 0, 3, "3"),
        (n - 2, 0, 2, "2"),
        (2, n - 4, 2, "2"),
        (2, n - 6, 3, "more than 3"),
        (n, 0, 0, "0"),
    ):
        results, more = await query(index, limit=str(limit), offset=str(offset))
        assert len(results) == min(limit, n - offset)
        assert more == expected and (more > 0) == (expected > 0), (limit, offset)
        # What the QIDO handler writes into the Warning header (PS3.18 8.3.4.4).
        assert f"There are {more} additional results" == f"There are {text} additional results", (
            limit,
            offset,
        )


async def test_concurrent_writers_keep_study_values(pg_index: Index, tmp_path: Path) -> None:
    """Two server processes on one PostgreSQL (here two engines) storing into and deleting from the same
    study at once: the study's counts and modalities end as its rows say."""
    index = pg_index
    other = Index(index.url)
    study = generate_uid()
    series = {m: generate_uid() for m in ("CT", "MR", "US", "CR")}
    items = [
        make_instance(tmp_path, study=study, series=series[m], Modality=m, InstanceNumber=str(k))
        for k in range(12)
        for m in series
    ]
    try:
        await index.store(stored(items[:4]))

        async def writer(ix: Index, mine: list) -> None:
            for p in mine:
                await ix.store(stored([p]))

        async def deleter(ix: Index, victims: list) -> None:
            for p in victims:
                await ix.delete(study, p.series_uid, p.sop_uid)

        await asyncio.gather(
            writer(index, items[4::2]),
            writer(other, items[5::2]),
            deleter(other, items[:4:2]),
            deleter(index, items[1:4:2]),
        )
        assert await _study_values(index, study) == await _recounted(index, study)
        assert (await _study_values(index, study))[1] == len(items) - 4  # type: ignore[index]
    finally:
        await other.close()


async def test_sqlite_trigram_index_serves_infix_and_follows_changes(tmp_path: Path) -> None:
    """SQLite answers an infix wildcard from its FTS5 trigram index (migration 0006), which triggers keep
    equal to the studies through replacements and deletes."""
    ix = Index(f"sqlite+aiosqlite:///{tmp_path / 'index.sqlite'}")
    await ix.create()
    try:
        assert ix.trigram
        studies = await _archive(ix, tmp_path)
        cond = query_module._wildcard_match(schema.studies.c.patient_id, "*DX5*", trigram=True)
        stmt = select(schema.studies.c.study_uid).where(cond)
        sql = str(stmt.compile(ix.engine.sync_engine, compile_kwargs={"literal_binds": True}))
        async with ix.engine.connect() as conn:
            plan = " ".join(str(r) for r in (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)).all())
        assert "studies_trigram VIRTUAL TABLE INDEX" in plan, plan

        # A study's PatientID changes when its instance is stored again; another study is deleted.
        renamed = make_instance(tmp_path, study=studies[0], PatientID="NEWPID77", PatientName="Neu^Name")
        await ix.store(stored([renamed]))
        await ix.delete(studies[5])
        assert uids((await query(ix, PatientID="*WPID7*"))[0]) == [studies[0]]
        assert uids((await query(ix, PatientName="*eu^na*"))[0]) == [studies[0]]
        assert (await query(ix, PatientID="*DX5*"))[0] == []  # IDX5 was the deleted study's
        async with ix.engine.connect() as conn:
            counts = [
                (await conn.exec_driver_sql(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("studies", "study_keys", "studies_trigram")
            ]
        assert counts[0] == counts[1] == counts[2] == len(studies) - 1
    finally:
        await ix.close()


async def test_deep_offsets_skip_days_and_agree_with_the_walk(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every offset into the unfiltered study list, found through the month and day counts (migration 0009),
    gives the page the plain walk gives, also after a study changes its date, studies are deleted, and
    one instance moves to another study; the counts stay equal to the studies all along."""
    studies = await _archive(index, tmp_path)
    # Two more studies on an existing day, so that a page starts inside a day with several studies.
    extra = [
        make_instance(tmp_path, study=generate_uid(), StudyDate="20200105", StudyTime=t) for t in ("1", "2")
    ]
    await index.store(stored(extra))
    studies += [p.study_uid for p in extra]

    async def pages(n: int) -> list[tuple[list[str], int]]:
        found = []
        for offset in range(n + 2):
            page, more = await query(index, offset=str(offset), limit="3")
            found.append((uids(page), int(more)))
        return found

    async def check() -> None:
        kept, counted = await day_counts(index)
        assert kept == counted
        everything = uids((await query(index, limit="1000"))[0])
        monkeypatch.setattr(query_module, "DAY_SKIP_MIN", 10**9)
        walked = await pages(len(everything))
        monkeypatch.setattr(query_module, "DAY_SKIP_MIN", 0)
        assert await pages(len(everything)) == walked
        assert walked == [
            (everything[o : o + 3], max(0, len(everything) - o - 3)) for o in range(len(everything) + 2)
        ]

    await check()
    # A study's date changes when its instance is stored again with another StudyDate.
    await index.store(stored([make_instance(tmp_path, study=studies[0], StudyDate="20250101")]))
    await check()
    await index.delete(studies[1])
    await index.delete(studies[-1])
    moved = (await query(index, "instance", studies[2]))[0][0]["00080018"]["Value"][0]
    await index.store(stored([make_instance(tmp_path, study=studies[3], sop=moved, StudyDate="19991231")]))
    await check()
    kept, _ = await day_counts(index)
    assert studies_counted(kept) == len((await query(index, limit="1000"))[0])


async def test_concurrent_writers_keep_day_counts(pg_index: Index, tmp_path: Path) -> None:
    """Two server processes creating and deleting studies of the same days at once (PostgreSQL): the
    per-day counts end equal to the studies."""
    index = pg_index
    other = Index(index.url)
    days = ["20261201", "20261202", "20261203"]
    items = [
        make_instance(tmp_path, study=generate_uid(), StudyDate=days[k % 3], StudyTime=f"{k:06d}")
        for k in range(48)
    ]
    try:

        async def writer(ix: Index, mine: list[ParsedInstance]) -> None:
            for start in range(0, len(mine), 3):  # several studies of several days per transaction
                await ix.store(stored(mine[start : start + 3]))

        async def deleter(ix: Index, victims: list[ParsedInstance]) -> None:
            for p in victims:
                await ix.delete(p.study_uid)

        await index.store(stored(items[:12]))
        await asyncio.gather(
            writer(index, items[12:30]),
            writer(other, items[30:][::-1]),
            deleter(other, items[:6]),
            deleter(index, items[6:12]),
        )
        kept, counted = await day_counts(index)
        assert kept == counted and studies_counted(counted) == 36
    finally:
        await other.close()
