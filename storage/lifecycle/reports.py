"""What lossy derivations left, read back from lossy_qa: per frame for one study, per study for the most
recent ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import schema

QA, I = schema.lossy_qa, schema.instances


async def study_qa(engine: AsyncEngine, study: str) -> list[dict[str, Any]]:
    """Every QA row of a study's derived instances, by instance and frame."""
    q = (
        select(
            QA.c.sop_uid,
            QA.c.source_uid,
            QA.c.frame,
            QA.c.layers,
            QA.c.bytes,
            QA.c.ratio,
            QA.c.psnr,
            QA.c.max_error,
            QA.c.ssim,
            QA.c.created_at,
        )
        .where(QA.c.study_uid == study)
        .order_by(QA.c.sop_uid, QA.c.frame)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [
        {
            "instance": r.sop_uid,
            "original": r.source_uid,
            "frame": r.frame,
            "layers": r.layers,
            "bytes": r.bytes,
            "ratio": round(r.ratio, 3),
            "psnr_db": None if r.psnr is None else round(r.psnr, 3),
            "max_error": r.max_error,
            "ssim": round(r.ssim, 6),
            "derived_at": r.created_at,
        }
        for r in rows
    ]


async def recent_qa(engine: AsyncEngine, limit: int) -> list[dict[str, Any]]:
    """One entry per study, the most recently derived first (interface 4)."""
    q = (
        select(
            QA.c.study_uid,
            func.count(func.distinct(QA.c.sop_uid)).label("instances"),
            func.count().label("frames"),
            func.sum(QA.c.bytes).label("bytes"),
            func.min(QA.c.psnr).label("worst_psnr"),
            func.max(QA.c.max_error).label("worst_error"),
            func.min(QA.c.ssim).label("worst_ssim"),
            func.max(QA.c.created_at).label("derived_at"),
        )
        .group_by(QA.c.study_uid)
        .order_by(func.max(QA.c.created_at).desc(), QA.c.study_uid)
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
        studies = [r.study_uid for r in rows]
        # The overall ratio: uncompressed pixel bytes of the derived instances over their frames' bytes.
        pixels: dict[str, int] = {}
        if studies:
            derived = select(QA.c.sop_uid).distinct().where(QA.c.study_uid.in_(studies))
            for uid, total in await conn.execute(
                select(I.c.study_uid, func.sum(I.c.pixel_bytes))
                .where(I.c.sop_uid.in_(derived))
                .group_by(I.c.study_uid)
            ):
                pixels[uid] = int(total or 0)
    return [
        {
            "study": r.study_uid,
            "instances": int(r.instances),
            "frames": int(r.frames),
            "ratio": round(pixels.get(r.study_uid, 0) / r.bytes, 3) if r.bytes else 0.0,
            "worst_psnr_db": None if r.worst_psnr is None else round(r.worst_psnr, 3),
            "worst_max_error": int(r.worst_error),
            "worst_ssim": round(float(r.worst_ssim), 6),
            "derived_at": r.derived_at,
        }
        for r in rows
    ]
