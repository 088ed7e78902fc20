"""Carrying out a lifecycle plan: lossy derivations swapped in one by one, tier moves, and the trash.

Crash safety (SIGKILL at any moment): the derived file is written and made durable first, under a key
that depends only on the original and the cut, while the original's row still stands; then one
transaction swaps the rows and queues the original's blob in blob_trash; only after the commit is that
blob deleted. A kill before the commit leaves the original (and at most an unreferenced derived blob, which
the rerun overwrites); a kill after it leaves the derived instance and a trash row, which the next run
empties first. Every instance is always visible as exactly one of the two.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.lifecycle.derive import DerivationFailed, derive, derived_blob_key
from storage.lifecycle.plan import InstancePlan, PolicyPlan, RulePlan
from storage.mastering.queue import lower_priority

if TYPE_CHECKING:
    from storage.archive import Archive

log = logging.getLogger(__name__)

# Told of every change: {"action": "derived"|"moved", "rule": ..., "study": ..., ...}.
OnChange = Callable[[dict[str, Any]], None]
# Told how many instances were just dealt with (a progress bar).
OnProgress = Callable[[int], None]


@dataclass
class ApplyResult:
    derived: int = 0
    skipped: int = 0  # replaced, deleted or failed meanwhile: left as they are
    moved_instances: int = 0
    moved_bytes: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    trashed: int = 0
    warnings: list[str] = field(default_factory=list)


async def derive_one(
    archive: Archive, plan: InstancePlan, rule_name: str, pool: ThreadPoolExecutor
) -> tuple[str, int] | None:
    """Derive one instance and swap it in: (derived SOP Instance UID, stored size), or None when the
    original changed meanwhile (or cannot be derived), which leaves it as it is."""
    loop = asyncio.get_running_loop()
    settings = archive.settings
    try:
        async with archive.blobs.local_file(plan.blob_key) as path:
            derived = await loop.run_in_executor(
                pool,
                functools.partial(derive, bulk_data_threshold=settings.bulk_data_threshold),
                path,
                plan,
                settings.tmp_dir,
            )
    except FileNotFoundError:
        return None  # replaced or deleted since the plan was made
    except DerivationFailed as exc:
        log.warning("instance not derived: %s", exc)
        return None
    key = derived_blob_key(derived.parsed.series_uid, derived.sop_uid)
    try:
        size = await archive.blobs.put_file(key, derived.path)
    finally:
        derived.path.unlink(missing_ok=True)
    qa_rows = [
        {
            "sop_uid": derived.sop_uid,
            "frame": q.number,
            "source_uid": plan.sop_uid,
            "study_uid": plan.study_uid,
            "layers": q.layers,
            "bytes": q.bytes,
            "ratio": q.ratio,
            "psnr": q.psnr,
            "max_error": q.max_error,
            "ssim": q.ssim,
        }
        for q in derived.qa
    ]
    swapped = await archive.index.swap_derived(
        plan.sop_uid,
        plan.blob_key,
        derived.parsed,
        key,
        size,
        derived.fidelity,
        qa_rows,
        f"lifecycle rule {rule_name!r}",
    )
    if not swapped:
        await archive.forget_blob(key)
        return None
    return derived.sop_uid, size


async def apply_plan(
    archive: Archive,
    plan: PolicyPlan,
    *,
    on_change: OnChange | None = None,
    on_progress: OnProgress | None = None,
) -> ApplyResult:
    """Carry out `plan` (made by storage.lifecycle.plan.plan_policy): resumable, since a second run
    plans only what the first did not finish."""
    result = ApplyResult()
    result.trashed += await archive.empty_blob_trash()
    # One derivation per core at a time: decoding, cutting and measuring release the GIL, and every
    # instance is swapped in by its own transaction, so they need no order among themselves.
    workers = os.cpu_count() or 1
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lifecycle", initializer=lower_priority)
    gate = asyncio.Semaphore(workers)

    async def one(inst: InstancePlan, rule_name: str) -> None:
        async with gate:
            done = await derive_one(archive, inst, rule_name, pool)
        _record(result, inst, rule_name, done, on_change)
        if on_progress is not None:
            on_progress(1)

    try:
        for rule_plan in plan.rules:
            if rule_plan.rule.action == "tier":
                await _tier(archive, rule_plan, result, on_change, on_progress)
                continue
            name = rule_plan.rule.name
            for start in range(0, len(rule_plan.instances), workers * BATCH_PER_WORKER):
                batch = rule_plan.instances[start : start + workers * BATCH_PER_WORKER]
                await asyncio.gather(*(one(inst, name) for inst in batch))
                result.trashed += await archive.empty_blob_trash()
    finally:
        pool.shutdown(wait=True)
    return result


# Instances handed out per worker between two emptyings of the trash.
BATCH_PER_WORKER = 8


def _record(
    result: ApplyResult,
    inst: InstancePlan,
    rule_name: str,
    done: tuple[str, int] | None,
    on_change: OnChange | None,
) -> None:
    if done is None:
        result.skipped += 1
        return
    sop, size = done
    result.derived += 1
    result.bytes_before += inst.size
    result.bytes_after += size
    if on_change is not None:
        on_change(
            {
                "action": "derived",
                "rule": rule_name,
                "study": inst.study_uid,
                "series": inst.series_uid,
                "original": inst.sop_uid,
                "derived": sop,
                "bytes_before": inst.size,
                "bytes_after": size,
            }
        )


async def _tier(
    archive: Archive,
    rule_plan: RulePlan,
    result: ApplyResult,
    on_change: OnChange | None,
    on_progress: OnProgress | None,
) -> None:
    if archive.cold_tier is None:
        message = f"rule {rule_plan.rule.name!r}: no cold tier (set DICOMWEB_COLD_BLOB_URL); skipped"
        log.warning(message)
        result.warnings.append(message)
        if on_progress is not None:
            on_progress(rule_plan.tier_instances)
        return
    for study in rule_plan.studies:
        moved, moved_bytes = await archive.move_study_to_cold(study)
        result.moved_instances += moved
        result.moved_bytes += moved_bytes
        if moved and on_change is not None:
            on_change(
                {
                    "action": "moved",
                    "rule": rule_plan.rule.name,
                    "study": study,
                    "instances": moved,
                    "bytes": moved_bytes,
                    "to": "cold",
                    "time": time.time(),
                }
            )
        if on_progress is not None:
            on_progress(moved)
