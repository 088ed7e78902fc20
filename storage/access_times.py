"""When each study was last read (studies.accessed_at), for lifecycle rules that leave studies read recently
alone, without a database write per request.

A viewer opening a study sends hundreds of requests (metadata, then every frame); the rules count in days.
So a study's read is written at most once per ACCESS_RESOLUTION per process, remembered in a bounded map
(studies pushed out of it are written again at their next read: one more write, nothing wrong), and in
the background: a request never waits for the write nor fails with it. Writes that come together go in
one transaction. With several replicas each writes its own reads; the later time wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# A study read again within this many seconds of its last recorded read is not written again.
ACCESS_RESOLUTION = 3600.0
# Studies remembered per process (about 100 bytes each).
REMEMBERED_STUDIES = 100_000


class AccessTimes:
    def __init__(
        self,
        write: Callable[[dict[str, float]], Awaitable[None]],
        *,
        resolution: float = ACCESS_RESOLUTION,
        capacity: int = REMEMBERED_STUDIES,
    ) -> None:
        self._write = write
        self.resolution = resolution
        self.capacity = capacity
        self._recorded: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.writes = 0  # transactions written, for tests and /status

    def record(self, study: str) -> None:
        """Note a read of `study` now (written in the background unless written within the resolution)."""
        now = time.time()
        last = self._recorded.get(study)
        if last is not None and now - last < self.resolution:
            return
        self._recorded[study] = now
        self._recorded.move_to_end(study)
        while len(self._recorded) > self.capacity:
            self._recorded.popitem(last=False)
        self._pending[study] = now
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="access-times")

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                await self._write(batch)
                self.writes += 1
            except Exception as exc:  # noqa: BLE001 - never a request's failure; written at the next read
                log.warning("could not record study access times: %s", type(exc).__name__)
                for study in batch:
                    self._recorded.pop(study, None)

    async def close(self) -> None:
        """Write what is pending (at shutdown)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
