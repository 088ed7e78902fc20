"""What a lifecycle policy would do, from the index alone (no pixel is decoded): the dry run, and the
work list `--apply` carries out.

For a lossy rule each frame of each master gets the fewest quality layers whose cut meets every limit of
the rule, read from the fidelity ladder measured when the master was made: bytes (hence the ratio against
the uncompressed frame), PSNR and maximum error of every layer prefix. A frame none of whose lossy cuts
qualifies keeps its master, and an instance is derived only when at least one of its frames changes.

Never touched: instances without a master (kept as received, or still waiting for one: `fidelity` is
NULL), masters whose ladder is not measured yet (storage.ladder: it is measured after the master, and a
cut is chosen from figures, never guessed; the dry run counts them per rule, `unmeasured_instances`, and a
later run takes them), lossy inputs (only a JPEG 2000 *lossless* master is cut, and anything labelled
Lossy Image Compression "01" is left alone), and instances already derived (their transfer syntax is .91,
and the successor table names them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import schema
from storage.config import Settings
from storage.ladder import ladder_measured
from storage.lifecycle.policy import Policy, Rule, StudyFacts, first_match
from storage.transfer_syntaxes import J2K_LOSSLESS

S, SE, I = schema.studies, schema.series, schema.instances
SUCC = schema.instance_successors
TB = 1e12  # storage is priced per decimal terabyte-month (1,000 GB), as the cloud price lists are
BODY_PART = "00180015"
LOSSY_IMAGE_COMPRESSION = "00282110"
# Values per IN (...) list: well under SQLite's and asyncpg's limits on bound parameters.
CHUNK = 500


@dataclass(frozen=True)
class FrameChoice:
    """The cut chosen for one frame; `layers` None = the frame keeps its master (whole codestream)."""

    number: int
    layers: int | None
    total_layers: int
    bytes: int  # of the frame as it will be stored (the cut, or the whole codestream)
    master_bytes: int  # of the whole (lossless) codestream
    uncompressed: float  # bytes of the frame's pixel data uncompressed
    psnr: float | None  # None: identical
    max_error: int

    @property
    def ratio(self) -> float:
        return self.uncompressed / self.bytes if self.bytes else 0.0


@dataclass
class InstancePlan:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    blob_key: str
    tier: str
    size: int  # stored now
    pixel_bytes: int
    frames: list[FrameChoice]
    fidelity: list[dict[str, Any]]  # the master's ladder, per frame

    @property
    def bytes_after(self) -> int:
        """The stored size once derived: the file less what its cut frames lose (the few hundred bytes
        of labels the derived file gains are not counted)."""
        return self.size - sum(f.master_bytes - f.bytes for f in self.frames if f.layers is not None)

    @property
    def layers(self) -> list[int | None]:
        return [f.layers for f in self.frames]


@dataclass
class RulePlan:
    rule: Rule
    studies: list[str] = field(default_factory=list)
    instances: list[InstancePlan] = field(default_factory=list)  # lossy: those that change
    # tier: what would move (instances and bytes on the hot tier)
    tier_instances: int = 0
    tier_bytes: int = 0
    # lossy: masters of its studies left alone because their ladder is not measured yet
    unmeasured_instances: int = 0

    @property
    def bytes_now(self) -> int:
        if self.rule.action == "tier":
            return self.tier_bytes
        return sum(i.size for i in self.instances)

    @property
    def bytes_after(self) -> int:
        if self.rule.action == "tier":
            return self.tier_bytes
        return sum(i.bytes_after for i in self.instances)

    @property
    def saving_bytes(self) -> int:
        return self.bytes_now - self.bytes_after

    def saving_per_month(self, settings: Settings) -> float:
        if self.rule.action == "tier":
            return self.tier_bytes / TB * (settings.price_per_tb_month - settings.cold_price_per_tb_month)
        return self.saving_bytes / TB * settings.price_per_tb_month

    @property
    def changed_frames(self) -> list[FrameChoice]:
        return [f for i in self.instances for f in i.frames if f.layers is not None]

    @property
    def worst_psnr_db(self) -> float | None:
        values = [f.psnr for f in self.changed_frames if f.psnr is not None]
        return min(values) if values else None

    @property
    def worst_max_error(self) -> int | None:
        values = [f.max_error for f in self.changed_frames]
        return max(values) if values else None

    def summary(self, settings: Settings) -> dict[str, Any]:
        """The figures of interface 3 (GET {root}/lifecycle) for this rule."""
        psnr = self.worst_psnr_db
        return {
            "name": self.rule.name,
            "action": self.rule.action,
            "studies": len(self.studies),
            "instances": self.tier_instances if self.rule.action == "tier" else len(self.instances),
            "bytes_now": self.bytes_now,
            "bytes_after": self.bytes_after,
            "saving_bytes": self.saving_bytes,
            "saving_per_month": self.saving_per_month(settings),
            "worst_psnr_db": None if psnr is None else round(psnr, 2),
            "worst_max_error": self.worst_max_error,
            "unmeasured_instances": self.unmeasured_instances,
        }


@dataclass
class PolicyPlan:
    policy: Policy
    rules: list[RulePlan]

    def summary(self, settings: Settings) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "rules": [r.summary(settings) for r in self.rules],
            "currency": settings.currency,
        }


def choose_layers(frame: dict[str, Any], uncompressed: float, rule: Rule, number: int) -> FrameChoice:
    """The fewest layers of one frame's ladder whose cut meets every limit of `rule`; the whole master
    when none does, or when the first that does is already lossless."""
    ladder = frame["layers"]
    whole = ladder[-1]
    keep = FrameChoice(
        number, None, len(ladder), int(whole["bytes"]), int(whole["bytes"]), uncompressed, None, 0
    )
    for step in ladder:
        if step["lossless"] or step["max_error"] == 0:
            return keep
        psnr = math.inf if step["psnr"] is None else float(step["psnr"])
        ratio = uncompressed / step["bytes"] if step["bytes"] else math.inf
        if rule.max_ratio is not None and ratio > rule.max_ratio:
            continue
        if rule.min_psnr_db is not None and psnr < rule.min_psnr_db:
            continue
        if rule.max_error is not None and step["max_error"] > rule.max_error:
            continue
        return FrameChoice(
            number,
            int(step["layers"]),
            len(ladder),
            int(step["bytes"]),
            int(whole["bytes"]),
            uncompressed,
            None if math.isinf(psnr) else psnr,
            int(step["max_error"]),
        )
    return keep


def plan_instance(row: Any, rule: Rule, fidelity: list[dict[str, Any]]) -> InstancePlan | None:
    """The plan for one master (its measured ladder `fidelity`) under a lossy rule; None when no frame
    would change."""
    frames_n = max(int(row.number_of_frames or 0), len(fidelity), 1)
    per_frame = row.pixel_bytes / frames_n if row.pixel_bytes else 0.0
    if not per_frame or not fidelity:
        return None
    choices = [choose_layers(f, per_frame, rule, n) for n, f in enumerate(fidelity, start=1)]
    if all(c.layers is None for c in choices):
        return None
    return InstancePlan(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        sop_uid=row.sop_uid,
        sop_class_uid=row.sop_class_uid,
        blob_key=row.blob_key,
        tier=row.tier,
        size=int(row.size),
        pixel_bytes=int(row.pixel_bytes),
        frames=choices,
        fidelity=fidelity,
    )


async def study_facts(engine: AsyncEngine, policy: Policy) -> list[StudyFacts]:
    """What every study that could match a rule is matched on. When every rule names modalities, only
    studies with a series of one of them are read (an indexed lookup on series.modality)."""
    q = select(S.c.study_uid, S.c.modalities, S.c.study_date, S.c.accessed_at)
    named = [r.modality for r in policy.rules]
    if named and all(m is not None for m in named):
        wanted = sorted(set().union(*(m for m in named if m is not None)))
        q = q.where(S.c.study_uid.in_(select(SE.c.study_uid).where(SE.c.modality.in_(wanted))))
    async with engine.connect() as conn:
        studies = (await conn.execute(q.order_by(S.c.study_uid))).all()
        uids = [r.study_uid for r in studies]
        received: dict[str, float] = {}
        parts: dict[str, set[str]] = {uid: set() for uid in uids}
        for chunk in _chunks(uids):
            for uid, first in await conn.execute(
                select(I.c.study_uid, func.min(I.c.created_at))
                .where(I.c.study_uid.in_(chunk))
                .group_by(I.c.study_uid)
            ):
                received[uid] = float(first or 0.0)
            if any(r.body_part is not None for r in policy.rules):
                for uid, attrs in await conn.execute(
                    select(SE.c.study_uid, SE.c.attrs).where(SE.c.study_uid.in_(chunk))
                ):
                    value = orjson.loads(attrs).get(BODY_PART, {}).get("Value") or []
                    parts[uid] |= {str(v).strip().upper() for v in value if v}
    return [
        StudyFacts(
            study_uid=r.study_uid,
            modalities=frozenset(m for m in (r.modalities or "").split("\\") if m),
            body_parts=frozenset(parts[r.study_uid]),
            study_date=r.study_date or "",
            first_received=received.get(r.study_uid, 0.0),
            accessed_at=float(r.accessed_at or 0.0),
        )
        for r in studies
    ]


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]


def _lossy_input(attrs: bytes) -> bool:
    value = orjson.loads(attrs).get(LOSSY_IMAGE_COMPRESSION, {}).get("Value") or []
    return bool(value) and str(value[0]).strip() == "01"


LOSSY_COLUMNS = (
    I.c.study_uid,
    I.c.series_uid,
    I.c.sop_uid,
    I.c.sop_class_uid,
    I.c.blob_key,
    I.c.tier,
    I.c.size,
    I.c.pixel_bytes,
    I.c.number_of_frames,
    I.c.fidelity,
    I.c.attrs,
)


async def lossy_candidates(engine: AsyncEngine, studies: list[str]) -> list[Any]:
    """Rows of the instances of `studies` a lossy rule may cut: lossless masters on the hot tier, never
    derived, never lossy before. (The cold tier's blobs are not read here: a study moved there is left
    as it is.)"""
    rows: list[Any] = []
    async with engine.connect() as conn:
        for chunk in _chunks(studies):
            q = (
                select(*LOSSY_COLUMNS)
                .where(
                    I.c.study_uid.in_(chunk)
                    & I.c.fidelity.isnot(None)
                    & (I.c.transfer_syntax == J2K_LOSSLESS)
                    & (I.c.tier == "hot")
                    & I.c.sop_uid.not_in(select(SUCC.c.successor_uid))
                )
                .order_by(I.c.study_uid, I.c.series_uid, I.c.instance_number, I.c.sop_uid)
            )
            rows += [r for r in (await conn.execute(q)).all() if not _lossy_input(r.attrs)]
    return rows


async def hot_totals(engine: AsyncEngine, studies: list[str]) -> tuple[list[str], int, int]:
    """Of `studies`, those with instances on the hot tier, and how many instances and bytes (what a
    tier rule would move)."""
    found: list[str] = []
    count = total = 0
    async with engine.connect() as conn:
        for chunk in _chunks(studies):
            q = (
                select(I.c.study_uid, func.count(), func.coalesce(func.sum(I.c.size), 0))
                .where(I.c.study_uid.in_(chunk) & (I.c.tier == "hot"))
                .group_by(I.c.study_uid)
            )
            for uid, n, size in await conn.execute(q):
                found.append(uid)
                count += int(n)
                total += int(size)
    return sorted(found), count, total


async def plan_policy(
    engine: AsyncEngine, policy: Policy, *, now: float | None = None, ignore_study_date: bool = False
) -> PolicyPlan:
    """The dry run: per rule, the studies it is the first match for and what it would do to them."""
    now = time.time() if now is None else now
    by_rule: dict[int, RulePlan] = {r.index: RulePlan(r) for r in policy.rules}
    for facts in await study_facts(engine, policy):
        rule = first_match(policy, facts, now, ignore_study_date=ignore_study_date)
        if rule is not None:
            by_rule[rule.index].studies.append(facts.study_uid)
    for rule_plan in by_rule.values():
        if rule_plan.rule.action == "tier":
            rule_plan.studies, rule_plan.tier_instances, rule_plan.tier_bytes = await hot_totals(
                engine, rule_plan.studies
            )
            continue
        for row in await lossy_candidates(engine, rule_plan.studies):
            fidelity = orjson.loads(row.fidelity)
            if not ladder_measured(fidelity):
                rule_plan.unmeasured_instances += 1
                continue
            if (planned := plan_instance(row, rule_plan.rule, fidelity)) is not None:
                rule_plan.instances.append(planned)
        # Studies it would change, not merely match.
        changed = {i.study_uid for i in rule_plan.instances}
        rule_plan.studies = [s for s in rule_plan.studies if s in changed]
    return PolicyPlan(policy, list(by_rule.values()))
