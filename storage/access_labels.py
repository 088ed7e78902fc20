"""Per-study access labels: which studies a token or API key that carries labels may see.

A study gets labels when it is stored by a key or token that has some (the labels are added to those it
already has), and an admin can set them (PUT .../studies/{study}/labels). A principal with labels sees a study
when they share at least one; a principal without labels sees every study its scopes allow. QIDO filters
silently (`visible_studies` is the subquery storage/query.py's run_query takes); any request naming a study
the principal may not see is answered as if the study did not exist.

The table is ``study_labels`` of storage/schema.py (migration 0007).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select

from storage import schema

study_labels = schema.study_labels


def visible_studies(labels: Iterable[str]) -> Select:
    """Study UIDs with at least one of `labels`: for `run_query(..., visible_studies=...)`."""
    return select(study_labels.c.study_uid).where(study_labels.c.label.in_(sorted(labels)))


async def add_labels(engine: AsyncEngine, studies: Iterable[str], labels: Iterable[str]) -> None:
    rows = [{"study_uid": s, "label": label} for s in set(studies) for label in set(labels)]
    if not rows:
        return
    async with engine.begin() as conn:
        have = {
            (r.study_uid, r.label)
            for r in (
                await conn.execute(
                    select(study_labels).where(study_labels.c.study_uid.in_({r["study_uid"] for r in rows}))
                )
            ).all()
        }
        new = [r for r in rows if (r["study_uid"], r["label"]) not in have]
        if new:
            await conn.execute(insert(study_labels), new)


async def set_labels(engine: AsyncEngine, study: str, labels: Iterable[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(study_labels).where(study_labels.c.study_uid == study))
        rows = [{"study_uid": study, "label": label} for label in sorted(set(labels))]
        if rows:
            await conn.execute(insert(study_labels), rows)


async def labels_of(engine: AsyncEngine, study: str) -> list[str]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(study_labels.c.label)
                .where(study_labels.c.study_uid == study)
                .order_by(study_labels.c.label)
            )
        ).all()
    return [r.label for r in rows]


async def study_exists(engine: AsyncEngine, study: str) -> bool:
    async with engine.connect() as conn:
        return bool(
            (await conn.execute(select(exists().where(schema.studies.c.study_uid == study)))).scalar()
        )


async def hidden(engine: AsyncEngine, study: str, labels: Iterable[str]) -> bool:
    """Whether `study` exists but shares no label with `labels` (a study not stored yet is not hidden)."""
    if not await study_exists(engine, study):
        return False
    async with engine.connect() as conn:
        shared = (
            await conn.execute(
                select(
                    exists().where(
                        study_labels.c.study_uid == study, study_labels.c.label.in_(sorted(labels))
                    )
                )
            )
        ).scalar()
    return not shared
