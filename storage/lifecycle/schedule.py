"""Applying the lifecycle policy on a schedule, in the server (DICOMWEB_LIFECYCLE_INTERVAL seconds).

With several replicas on one PostgreSQL database only one applies the policy at a time: the run holds a
session-level advisory lock, which PostgreSQL releases by itself if the replica dies; a replica that does
not get it skips that round. On SQLite there is one server process. The work itself runs in a
low-priority thread (storage.lifecycle.apply), so requests keep the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sqlalchemy import text

from storage.lifecycle.apply import OnChange
from storage.lifecycle.policy import PolicyError, load_policy

if TYPE_CHECKING:
    from storage.archive import Archive

log = logging.getLogger(__name__)

# pg_advisory_lock key: an arbitrary constant naming "the lifecycle run" (any other lock uses another).
LOCK_KEY = 0x5B0F_2D1C_6A1E_33A7


@contextlib.asynccontextmanager
async def one_replica(archive: Archive) -> AsyncIterator[bool]:
    """True when this process may run the policy now (it holds the lock until the block ends)."""
    if archive.index.is_sqlite:
        yield True
        return
    async with archive.index.engine.connect() as conn:
        got = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}))
        await conn.commit()
        try:
            yield got
        finally:
            if got:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                await conn.commit()


async def run_once(archive: Archive, policy_path: str, on_change: OnChange | None = None) -> bool:
    """Apply the policy now unless another replica is; False when it did not run."""
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        log.error("lifecycle policy not applied: %s", exc)
        return False
    async with one_replica(archive) as mine:
        if not mine:
            return False
        plan = await archive.lifecycle_plan(policy)
        result = await archive.apply_lifecycle_plan(plan, on_change=on_change)
        log.info(
            "lifecycle policy %s applied: %d derived, %d skipped, %d moved to cold",
            policy.name,
            result.derived,
            result.skipped,
            result.moved_instances,
        )
        return True


async def run_on_schedule(
    archive: Archive, policy_path: str, interval: float, on_change: OnChange | None = None
) -> None:
    """Every `interval` seconds, until cancelled; a failed round is logged and the next one tried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_once(archive, policy_path, on_change)
        except asyncio.CancelledError:
            raise
        except Exception:  # the schedule survives one bad round (the database was away...)
            log.exception("lifecycle round failed")
