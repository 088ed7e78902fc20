"""Alembic migrations carry an archive made before them (the schema of tests/fixtures/schema_v1.py, filled
as that code filled it) to the current schema, on SQLite and PostgreSQL; the migrated archive answers
every query as an archive made by the current code does; a new archive and a migrated one both end
exactly at storage/schema.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.uid import generate_uid
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from storage import migrations, schema
from storage.dicom_file import ParsedInstance
from storage.index import Index
from tests.fixtures import schema_v1
from tests.index_helpers import (
    day_counts,
    make_instance,
    new_postgres_database,
    query,
    stored,
    studies_counted,
)
from tests.test_index_scale import PEOPLE, QUERIES, people
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster


@pytest.fixture(params=["sqlite", "postgres"])
async def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield (
            f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite'}",
            f"sqlite+aiosqlite:///{tmp_path / 'new.sqlite'}",
        )
    else:
        server = request.getfixturevalue("postgres")
        yield await new_postgres_database(server), await new_postgres_database(server)


class OldIndex:
    """Writes rows as the code before migrations did (create_all of its schema, upserts, counts)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def store(self, items: list[tuple[ParsedInstance, str, int]]) -> None:
        S, SE, I, J = schema_v1.studies, schema_v1.series, schema_v1.instances, schema_v1.master_jobs
        now = time.time()
        studies = {p.study_uid: {**p.study_row, "updated_at": now} for p, _, _ in items}
        series = {p.series_uid: p.series_row for p, _, _ in items}
        instances = {
            p.sop_uid: {**p.instance_row, "blob_key": key, "size": size, "created_at": now}
            for p, key, size in items
        }
        for uid, row in studies.items():
            mine = [p for p, _, _ in items if p.study_uid == uid]
            row.update(
                num_instances=len(mine),
                num_series=len({p.series_uid for p in mine}),
                modalities="\\".join(sorted({p.series_row["modality"] for p in mine} - {""})),
                sop_classes="\\".join(sorted({p.sop_class_uid for p in mine})),
            )
        for uid, row in series.items():
            row["num_instances"] = sum(1 for p, _, _ in items if p.series_uid == uid)
        jobs = [
            {
                "sop_uid": p.sop_uid,
                "blob_key": key,
                "state": "kept",
                "reason": p.kept_reason,
                "updated_at": now,
            }
            for p, key, _ in items
        ]
        engine = create_async_engine(self.url)
        async with engine.begin() as conn:
            await conn.run_sync(schema_v1.metadata.create_all)
            await conn.execute(insert(S), list(studies.values()))
            await conn.execute(insert(SE), list(series.values()))
            await conn.execute(insert(I), list(instances.values()))
            await conn.execute(insert(J), jobs)
        await engine.dispose()


def _differences(conn: Any) -> list[Any]:
    """What separates the database from storage/schema.py (the optional trigram indexes aside)."""
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    diffs = compare_metadata(context, schema.metadata)
    return [
        d
        for d in diffs
        if not (d[0] == "remove_index" and d[1].name.endswith("_trgm"))
        and not (d[0] == "remove_table" and d[1].name in ("alembic_version", "study_keys"))
        and not (d[0] == "remove_table" and d[1].name.startswith("studies_trigram"))
    ]


async def _check_schema(index: Index) -> None:
    async with index.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []
        assert await conn.run_sync(migrations.current) == migrations.head()
        # Alembic does not compare an index's column order (ASC/DESC): the study list's index, by hand.
        sql = (
            "SELECT sql FROM sqlite_master WHERE name = 'ix_studies_date_order'"
            if index.is_sqlite
            else "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_studies_date_order'"
        )
        definition = (await conn.exec_driver_sql(sql)).scalar_one()
    assert "study_date DESC, study_time DESC, study_uid" in definition.replace('"', ""), definition


async def test_old_archive_is_carried_forward(two_urls: tuple[str, str], tmp_path: Path) -> None:
    old_url, new_url = two_urls
    # The same instances through today's code, and through the code before migrations.
    items = stored(people(tmp_path))
    fresh = Index(new_url)
    await fresh.create()
    await fresh.store(items)
    await OldIndex(old_url).store(items)

    migrated = Index(old_url)
    await migrated.create()
    try:
        await _check_schema(migrated)
        await _check_schema(fresh)
        everything, _ = await query(migrated, includefield="all", limit="1000")
        assert len(everything) == len(PEOPLE)
        for params in QUERIES:
            for paging in ({}, {"limit": "3", "offset": "2"}):
                assert await query(migrated, **params, **paging) == await query(fresh, **params, **paging), (
                    params
                )
        for level in ("series", "instance"):
            assert await query(migrated, level, limit="1000") == await query(fresh, level, limit="1000")
        kept, counted = await day_counts(migrated)  # migration 0009 counted the studies already there
        assert kept == counted and studies_counted(counted) == len(PEOPLE)
        # The migrated archive keeps working: a study stored and deleted, the lower-cased name matched.
        study = generate_uid()
        await migrated.store(
            stored([make_instance(tmp_path, study=study, PatientName="New^Patient", Modality="CT")])
        )
        (found,), _ = await query(migrated, PatientName="NEW*")
        assert found["0020000D"]["Value"] == [study] and found["00201208"]["Value"] == [1]
        assert len(await migrated.delete(study)) == 1
        assert (await query(migrated, PatientName="NEW*"))[0] == []
        await migrated.create()  # a second start finds nothing to do
        await _check_schema(migrated)
    finally:
        await migrated.close()
        await fresh.close()


async def test_new_archive_matches_schema(tmp_path: Path) -> None:
    index = Index(f"sqlite+aiosqlite:///{tmp_path / 'index.sqlite'}")
    await index.create()
    try:
        await _check_schema(index)
    finally:
        await index.close()


async def test_servers_starting_together_migrate_once(two_urls: tuple[str, str]) -> None:
    """Several server processes starting at once on one database: one migrates, the others wait for it
    (an advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite) and find nothing left to do."""
    url, _ = two_urls
    indexes = [Index(url) for _ in range(3)]
    try:
        await asyncio.gather(*(ix.create() for ix in indexes))
        for ix in indexes:
            await _check_schema(ix)
    finally:
        for ix in indexes:
            await ix.close()
