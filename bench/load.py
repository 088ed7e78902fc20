"""Request load on the servers: rounds that alternate between them, sequential timed GETs (latency), and
lists of URLs fetched with as many requests in flight as a browser opens."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from bench.checks import Check, safe_check
from bench.http_client import CLIENT_ERRORS, Client, Response
from bench.measure import Measure, quiet_gc
from bench.processes import cpu_seconds

BROWSER_CONNECTIONS = 6  # what a browser opens per origin (HTTP/1.1)


def interleave(names: Sequence[str], rounds: int, step: Callable[[str, int], None]) -> None:
    """Call step(name, round) for every server in every round, alternating
    who goes first, so drifting background load (a shared CI box) hits every
    server alike instead of whichever happened to run during the spike."""
    for i in range(rounds):
        for name in names if i % 2 == 0 else list(reversed(names)):
            step(name, i)


def timed_get(client: Client, url: str, headers: dict[str, str]) -> tuple[float, Response]:
    """One GET; (seconds, answer). Raises CLIENT_ERRORS."""
    with quiet_gc():
        t0 = time.perf_counter()
        r = client.get(url, headers=headers)
        return time.perf_counter() - t0, r


def latency(
    clients: dict[str, Client],
    urls: dict[str, str],
    headers: dict[str, str],
    checks: dict[str, Check],
    runs: int,
    warmups: int = 2,
    pids: dict[str, int | None] | None = None,
) -> dict[str, Measure]:
    """Median latency (ms) per server of ``runs`` sequential GETs after ``warmups``."""
    times: dict[str, list[float]] = {n: [] for n in clients}
    cpu: dict[str, float] = dict.fromkeys(clients, 0.0)
    pids = pids or {}
    problems: dict[str, str | None] = dict.fromkeys(clients)
    failed: set[str] = set()

    def step(name: str, i: int) -> None:
        if name in failed:
            return
        try:
            c0 = cpu_seconds(pids.get(name))
            dt, r = timed_get(clients[name], urls[name], headers)
            c1 = cpu_seconds(pids.get(name))
        except CLIENT_ERRORS as exc:
            failed.add(name)
            problems[name] = f"{type(exc).__name__}: {exc}"
            return
        # Every answer is checked, outside the timed section.
        problems[name] = problems[name] or safe_check(checks[name], r)
        if i >= warmups:
            times[name].append(dt * 1000)
            cpu[name] += c1 - c0

    interleave(list(clients), warmups + runs, step)
    out = {}
    for name, ts in times.items():
        if name in failed or not ts:
            out[name] = Measure(None, problems[name])
            continue
        med = statistics.median(ts)
        detail = f"min {min(ts):.1f} / median {med:.1f} / max {max(ts):.1f} ms, n={runs}"
        if pids.get(name):
            detail += f"; server CPU ≈ {cpu[name] / runs * 1000:.1f} ms/request"
        out[name] = Measure(med, problems[name], detail)
    return out


def fetch_all(
    client: Client, urls: Sequence[str], headers: dict[str, str], concurrency: int = BROWSER_CONNECTIONS
) -> tuple[float, list[Response | Exception]]:
    """GET every URL with ``concurrency`` in flight; (wall seconds, answers in URL order)."""

    def get(url: str) -> Response | Exception:
        try:
            return client.get(url, headers=headers)
        except CLIENT_ERRORS as exc:
            return exc

    with ThreadPoolExecutor(concurrency) as pool, quiet_gc():
        t0 = time.perf_counter()
        answers = list(pool.map(get, urls))
        return time.perf_counter() - t0, answers
