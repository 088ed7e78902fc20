"""STOW-RS: the corpus read and encoded into requests up front, sent with a few in flight, and loaded into
every server in slices that alternate between them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.checks import check_stow_answer
from bench.dicomweb_urls import DICOM_JSON
from bench.http_client import CLIENT_ERRORS, Client, multipart_body
from bench.load import interleave
from bench.measure import Measure, quiet_gc
from bench.processes import cpu_seconds
from bench.servers import ServerHandle, wait_idle

STOW_CONCURRENCY = 4
STOW_MAX_INSTANCES = 16
STOW_MAX_BYTES = 8 << 20


@dataclass
class StowBatch:
    body: bytes
    content_type: str
    count: int


def batch_paths(
    paths: Sequence[Path], max_count: int = STOW_MAX_INSTANCES, max_bytes: int = STOW_MAX_BYTES
) -> list[list[Path]]:
    """Group files in order into requests of <= max_count files / ~max_bytes."""
    batches: list[list[Path]] = []
    current: list[Path] = []
    size = 0
    for p in paths:
        n = p.stat().st_size
        if current and (len(current) >= max_count or size + n > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(p)
        size += n
    if current:
        batches.append(current)
    return batches


def prepare_stow(paths: Sequence[Path]) -> list[StowBatch]:
    """Read and encode all requests up front so client work is not timed."""
    out = []
    for group in batch_paths(paths):
        body, ctype = multipart_body([p.read_bytes() for p in group])
        out.append(StowBatch(body, ctype, len(group)))
    return out


@dataclass
class StowResult:
    seconds: float
    instances: int
    requests: int
    problems: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def stow(
    client: Client, dicomweb_url: str, batches: Sequence[StowBatch], concurrency: int = STOW_CONCURRENCY
) -> StowResult:
    """POST ``batches`` with ``concurrency`` in flight; every answer is checked."""
    url = f"{dicomweb_url}/studies"

    def post(b: StowBatch) -> str | None:
        try:
            r = client.post(
                url, content=b.body, headers={"Content-Type": b.content_type, "Accept": DICOM_JSON}
            )
        except CLIENT_ERRORS as exc:
            return f"STOW {type(exc).__name__}: {exc}"
        return check_stow_answer(r, b.count)

    with ThreadPoolExecutor(concurrency) as pool, quiet_gc():
        t0 = time.perf_counter()
        answers = list(pool.map(post, batches))
        seconds = time.perf_counter() - t0
    problems = sorted({a for a in answers if a})
    return StowResult(seconds, sum(b.count for b in batches), len(batches), problems)


@dataclass
class LoadResult:
    stow: Measure  # instances/s over the summed request wall time
    ingest: Measure  # the same including the background work each slice triggered
    background_seconds: float  # that background work, waited for before the next slice


def load_servers(
    servers: Sequence[ServerHandle],
    clients: dict[str, Client],
    batches: Sequence[StowBatch],
    chunks: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, LoadResult]:
    """STOW the whole corpus into every server, waiting after each slice until it is idle again.

    The batches are sent in ``chunks`` contiguous slices, alternating between
    servers (A B, B A, ...), so a burst of background load does not land on a
    single server's whole load.
    """
    n = max(1, min(chunks, len(batches)))
    bounds = [round(i * len(batches) / n) for i in range(n + 1)]
    slices = [batches[bounds[i] : bounds[i + 1]] for i in range(n)]
    total = {s.name: StowResult(0.0, 0, 0) for s in servers}
    urls = {s.name: s.dicomweb_url for s in servers}
    log(
        f"STOW {sum(b.count for b in batches)} instances in {len(batches)} requests into "
        f"{', '.join(urls)} ({n} alternating slices) ..."
    )

    pids = {s.name: s.pid for s in servers}
    cpu: dict[str, float] = dict.fromkeys(urls, 0.0)

    by_name = {s.name: s for s in servers}
    background = {s.name: [0.0, 0.0] for s in servers}  # seconds, CPU seconds

    def step(name: str, i: int) -> None:
        c0 = cpu_seconds(pids[name])
        r = stow(clients[name], urls[name], slices[i])
        cpu[name] += cpu_seconds(pids[name]) - c0
        busy, busy_cpu = wait_idle(by_name[name])
        background[name][0] += busy
        background[name][1] += busy_cpu
        t = total[name]
        t.seconds += r.seconds
        t.instances += r.instances
        t.requests += r.requests
        t.problems += [p for p in r.problems if p not in t.problems]

    interleave([s.name for s in servers], n, step)
    out = {}
    for name, t in total.items():
        per_instance = (
            f"; server CPU ≈ {cpu[name] / t.instances * 1000:.1f} ms/instance" if t.instances else ""
        )
        problem = "; ".join(t.problems) or None
        stow_m = Measure(
            t.per_second,
            problem,
            f"{t.instances} instances, {t.requests} requests, {t.seconds:.2f} s" + per_instance,
        )
        busy, busy_cpu = background[name]
        until_idle = t.seconds + busy
        ingest_m = Measure(
            t.instances / until_idle if until_idle else None,
            problem,
            f"{t.seconds:.2f} s STOW + {busy:.1f} s / {busy_cpu:.1f} CPU-s of background work",
        )
        out[name] = LoadResult(stow_m, ingest_m, busy)
        log(
            f"[{name}]   {t.per_second:.1f} instances/s ({t.seconds:.2f} s), then {busy:.1f} s of background "
            f"work {problem or ''}"
        )
    return out
