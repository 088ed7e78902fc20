"""The index at scale (issue 14): each common query's latency as the archive grows, on SQLite, PostgreSQL
and Orthanc.

    python -m bench.index_scale                      # 1k, 10k, 100k studies; SQLite, PostgreSQL, Orthanc
    python -m bench.index_scale --quick              # 1k and 5k studies, fewer runs
    python -m bench.index_scale --sizes 1000,10000,100000,1000000 --backends postgres
    python -m bench.index_scale --explain            # also print each query's plan at every size

Each backend gets a fresh archive, filled through STOW-RS with synthetic one-instance studies
(``bench/synthetic.py``: no pixel data, so only the index works), many studies per request. At every
size each query runs sequentially (``--runs`` times after warm-ups) and its median and 95th percentile
are printed; every answer is checked (count of results, Warning header). Before each bulk load, 1000
studies are stored the way a gateway sends them (16 instances per request, 4 requests in flight): STOW
throughput at that size. A 1000-instance series is stored first, for series ``/metadata``.

The end prints the issue's targets as ratios: each query's latency at the largest size over the smallest,
the study list against Orthanc, series ``/metadata`` at the largest size over the smallest, and STOW
throughput at the largest size over the empty archive.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from bench import pg_cluster, synthetic
from bench.checks import check_stow_answer
from bench.dicomweb_urls import DICOM_JSON
from bench.http_client import Client, Response, multipart_body
from bench.load import timed_get
from bench.measure import quiet_gc, table
from bench.servers import ServerHandle, start_ours, start_peer, try_start

RUN = 4  # the synthetic UIDs' run number (one digit)
BIG_RUN = 9  # the run of the one study holding a 1000-instance series
BIG_SERIES = 1000
PROBE = 1000  # studies stored gateway-style before each bulk load (STOW throughput)
BULK_PER_REQUEST = 500
INCLUDES = "00081030,00080060,00080090,00100030"  # what OHIF's study list asks for
OHIF_LIST = {"limit": "101", "offset": "0", "fuzzymatching": "false", "includefield": INCLUDES}
# Ranges wide enough that the answer is a full page (101 studies) at every size from 1000 on, so that
# latencies at different sizes compare answers of the same size.
DECADE = "20100101-20191231"
QUARTER_CENTURY = "20000101-20241231"


@dataclass
class Query:
    name: str
    path: str
    params: dict[str, str]
    expected: Callable[[int], int]  # results expected at this many regular studies
    cut: Callable[[int], bool] = lambda n: False  # a Warning header expected
    level: str = "study"  # for --explain: study, series, instance, metadata
    scope: tuple[str | None, str | None] = (None, None)

    def url(self, root: str) -> str:
        # Encoded as browsers' encodeURIComponent does (OHIF's client): "*" as is. (Orthanc 1.10's DICOMweb
        # plugin matches nothing for "%2A", which Python's urlencode would send.)
        query = urlencode(self.params, quote_via=quote, safe="*'()!~")
        return f"{root}{self.path}" + (f"?{query}" if self.params else "")


def _count(n: int, pred: Callable[[int], bool]) -> int:
    return sum(1 for i in range(n) if pred(i))


def _in_decade(i: int) -> bool:
    return "20100101" <= synthetic.study_date(i) <= "20191231"


def _in_quarter_century(i: int) -> bool:
    return synthetic.study_date(i) <= "20241231"


def queries(n: int) -> list[Query]:
    """The issue's list; answers have a fixed size where the issue's query allows it."""
    mid = synthetic.study_uid(RUN, n // 2)
    uid_list = ",".join(synthetic.study_uid(RUN, i) for i in (10, n // 2, n - 1))
    big_study = synthetic.study_uid(BIG_RUN, 1)
    big_series = synthetic.study_uid(BIG_RUN, 1, 2)
    decade = _count(n, _in_decade)
    mr = _count(n, lambda i: _in_quarter_century(i) and synthetic.modality(i) == "MR")
    patients = {p for p in (12, *range(120, 130))}

    def prefix_hits(n: int) -> int:
        return _count(min(n, 260), lambda i: 120 <= synthetic.patient_of(i) < 130)

    def infix_hits(n: int) -> int:
        return _count(min(n, 260), lambda i: synthetic.patient_of(i) in patients)

    page = {"limit": "101"}
    return [
        Query("study list (OHIF)", "/studies", OHIF_LIST, lambda n: min(101, n + 1), lambda n: n + 1 > 101),
        Query(
            "PatientName prefix, other case", "/studies", {"PatientName": "pat000012*", **page}, prefix_hits
        ),
        Query("PatientName infix", "/studies", {"PatientName": "*000012*", **page}, infix_hits),
        Query("PatientID prefix", "/studies", {"PatientID": "PID000012*", **page}, prefix_hits),
        Query("PatientID infix", "/studies", {"PatientID": "*000012*", **page}, infix_hits),
        Query("AccessionNumber", "/studies", {"AccessionNumber": synthetic.accession(123)}, lambda n: 1),
        Query(
            "StudyDate range (10 years)",
            "/studies",
            {"StudyDate": DECADE, **page},
            lambda n: min(101, decade),
            lambda n: decade > 101,
        ),
        Query(
            "ModalitiesInStudy + StudyDate",
            "/studies",
            {"ModalitiesInStudy": "MR", "StudyDate": QUARTER_CENTURY, **page},
            lambda n: min(101, mr),
            lambda n: mr > 101,
        ),
        Query("StudyInstanceUID list (3)", "/studies", {"StudyInstanceUID": uid_list}, lambda n: 3),
        Query(
            "series of a study", f"/studies/{mid}/series", {}, lambda n: 1, level="series", scope=(mid, None)
        ),
        Query(
            "instances of a study",
            f"/studies/{mid}/instances",
            {},
            lambda n: 1,
            level="instance",
            scope=(mid, None),
        ),
        Query(
            "all series, Modality=MR",
            "/series",
            {"Modality": "MR", **page},
            lambda n: 101,
            lambda n: True,
            level="series",
        ),
        Query(
            "offset deep into the list",
            "/studies",
            {"limit": "101", "offset": str(max(0, n - 150))},
            lambda n: 101,
            lambda n: True,
        ),
        Query(
            "includefield=all",
            "/studies",
            {"limit": "101", "includefield": "all"},
            lambda n: 101,
            lambda n: True,
        ),
        Query(
            "series /metadata, 1000 instances",
            f"/studies/{big_study}/series/{big_series}/metadata",
            {},
            lambda n: BIG_SERIES,
            level="metadata",
            scope=(big_study, big_series),
        ),
    ]


def check(q: Query, n: int, r: Response, peer: bool) -> str | None:
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:200]!r}"
    body = r.json()
    if not isinstance(body, list):
        return "not a JSON array"
    if len(body) != q.expected(n):
        return f"{len(body)} results, expected {q.expected(n)}"
    if not peer and ("warning" in r.headers) != q.cut(n):
        return f"Warning header {'missing' if q.cut(n) else 'unexpected'}: {r.headers.get('warning')}"
    return None


@dataclass
class Figures:
    median: dict[tuple[str, int], float] = field(default_factory=dict)
    p95: dict[tuple[str, int], float] = field(default_factory=dict)
    problems: dict[tuple[str, int], str] = field(default_factory=dict)
    stow: dict[int, float] = field(default_factory=dict)  # instances/s of the gateway-style probe at a size
    load_seconds: dict[int, float] = field(default_factory=dict)  # bulk load time to reach a size


WARMUPS = 5


def measure(client: Client, root: str, n: int, runs: int, peer: bool, figures: Figures) -> None:
    for q in queries(n):
        times, problem = [], None
        url = q.url(root)
        for i in range(runs + WARMUPS):
            dt, r = timed_get(client, url, {"Accept": DICOM_JSON})
            problem = problem or check(q, n, r, peer)
            if i >= WARMUPS:
                times.append(dt * 1000)
        times.sort()
        figures.median[q.name, n] = statistics.median(times)
        figures.p95[q.name, n] = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        if problem:
            figures.problems[q.name, n] = problem


def post_all(client: Client, root: str, bodies: Iterator[tuple[bytes, str, int]], concurrency: int) -> float:
    """POST every (body, content type, count) with ``concurrency`` in flight; seconds. Raises on a problem."""

    def post(item: tuple[bytes, str, int]) -> str | None:
        body, ctype, count = item
        r = client.post(
            f"{root}/studies", content=body, headers={"Content-Type": ctype, "Accept": DICOM_JSON}
        )
        return check_stow_answer(r, count)

    with ThreadPoolExecutor(concurrency) as pool, quiet_gc():
        t0 = time.perf_counter()
        problems = [p for p in pool.map(post, bodies) if p]
        seconds = time.perf_counter() - t0
    if problems:
        raise RuntimeError(f"load failed: {problems[0]}")
    return seconds


def requests(start: int, stop: int, per_request: int) -> Iterator[tuple[bytes, str, int]]:
    for lo in range(start, stop, per_request):
        parts = list(synthetic.studies(RUN, lo, min(stop, lo + per_request)))
        body, ctype = multipart_body(parts)
        yield body, ctype, len(parts)


def fill(
    client: Client,
    root: str,
    sizes: list[int],
    runs: int,
    peer: bool,
    name: str,
    explain: Callable[[int], None] | None = None,
    settle: Callable[[], None] | None = None,
) -> Figures:
    figures = Figures()
    big = synthetic.big_series(BIG_RUN, 1, BIG_SERIES)
    post_all(
        client, root, iter([(*multipart_body(big[i : i + 100]), 100) for i in range(0, BIG_SERIES, 100)]), 2
    )
    have = 0
    for n in sizes:
        # The gateway-style probe, then the bulk load to this size.
        probe = min(PROBE, n - have)
        figures.stow[have] = stow_probe(client, root, have, probe)
        t0 = time.perf_counter()
        post_all(client, root, requests(have + probe, n, BULK_PER_REQUEST), 2)
        figures.load_seconds[n] = time.perf_counter() - t0
        print(
            f"[{name}] {n} studies: probe {figures.stow[have]:.0f} instances/s at {have}; "
            f"bulk load {n - have - probe} in {figures.load_seconds[n]:.1f} s "
            f"({(n - have - probe) / max(figures.load_seconds[n], 1e-9):.0f}/s)",
            flush=True,
        )
        have = n
        if settle:
            settle()
        measure(client, root, n, runs, peer, figures)
        if explain:
            explain(n)
    figures.stow[have] = stow_probe(client, root, have, PROBE)
    return figures


def stow_probe(client: Client, root: str, start: int, count: int) -> float:
    """Instances/s storing ``count`` studies gateway-style, the better of its two halves (a shared machine's
    other jobs slow one half or the other)."""
    half = count // 2
    first = post_all(client, root, requests(start, start + half, 16), 4)
    second = post_all(client, root, requests(start + half, start + count, 16), 4)
    return max(half / first, (count - half) / second)


# ---- plans -----------------------------------------------------------------------------------------------


def explain_plans(url: str, n: int) -> None:
    """Print each query's plan on the live index (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on
    PostgreSQL), for the SQL this tree's query code emits."""
    asyncio.run(_explain(url, n))


async def _explain(url: str, n: int) -> None:
    from sqlalchemy import event

    from storage.index import Index
    from storage.query import parse_query, run_query

    index = Index(url)
    await index.create()  # nothing to migrate: it learns what the database has (SQLite's trigram index)
    captured: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        captured.append((statement, parameters))

    event.listen(index.engine.sync_engine, "before_cursor_execute", capture)
    print(f"\n--- plans at {n} studies ({index.engine.dialect.name}) ---")
    try:
        for q in queries(n):
            captured.clear()
            if q.level == "metadata":
                await index.metadata(*q.scope)  # type: ignore[arg-type]
            else:
                level = q.level  # type: ignore[assignment]
                await run_query(index, parse_query(level, list(q.params.items()), *q.scope))  # type: ignore[arg-type]
            statements = [(s, p) for s, p in captured if s.lstrip().upper().startswith("SELECT")]
            event.remove(index.engine.sync_engine, "before_cursor_execute", capture)
            print(f"\n# {q.name}")
            for statement, params in statements:
                prefix = (
                    "EXPLAIN QUERY PLAN " if index.is_sqlite else "EXPLAIN (ANALYZE, COSTS OFF, BUFFERS OFF) "
                )
                async with index.engine.connect() as conn:
                    rows = (await conn.exec_driver_sql(prefix + statement, params)).all()  # type: ignore[arg-type]
                for row in rows:
                    print("   ", row[-1])
            event.listen(index.engine.sync_engine, "before_cursor_execute", capture)
    finally:
        await index.close()


# ---- backends ----------------------------------------------------------------------------------------------


@contextmanager
def env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_backend(name: str, sizes: list[int], runs: int, do_explain: bool) -> Figures | None:
    with ExitStack() as stack, Client() as client:
        url: str | None = None
        server: ServerHandle | None
        if name == "orthanc":
            server = start_peer(stack)
        else:
            if name == "postgres":
                url = stack.enter_context(pg_cluster.running())
            with env("DICOMWEB_DATABASE_URL", url), env("DICOMWEB_ACCESS_LOG", "0"):
                server = try_start(stack, name, start_ours)
            if server is not None and url is None:
                url = f"sqlite+aiosqlite:///{server.data_dirs[0] / 'index.sqlite'}"
        if server is None:
            return None
        explain = (lambda n: explain_plans(url, n)) if do_explain and url else None
        # PostgreSQL: measured as autovacuum leaves the tables, not in the minute after a bulk load.
        settle = (lambda: pg_cluster.vacuum_analyze(url)) if name == "postgres" and url else None
        return fill(client, server.dicomweb_url, sizes, runs, name == "orthanc", name, explain, settle)


def report(results: dict[str, Figures], sizes: list[int]) -> None:
    names = [q.name for q in queries(max(sizes))]
    for backend, fig in results.items():
        print(f"\n{backend}: median / p95 ms")
        rows = []
        for q in names:
            cells = []
            for n in sizes:
                if (q, n) in fig.median:
                    mark = " !" if (q, n) in fig.problems else ""
                    cells.append(f"{fig.median[q, n]:.1f} / {fig.p95[q, n]:.1f}{mark}")
                else:
                    cells.append("-")
            rows.append([q, *cells])
        print(table(["query", *(f"{n} studies" for n in sizes)], rows))
        print(
            "bulk load:",
            ", ".join(f"{s:.0f} s to {n}" for n, s in fig.load_seconds.items()),
            "; STOW probe:",
            ", ".join(f"{v:.0f}/s at {k}" for k, v in sorted(fig.stow.items())),
        )
        for (q, n), problem in fig.problems.items():
            print(f"  ! {q} at {n}: {problem}")
    lo, hi = min(sizes), max(sizes)
    print(f"\nTargets ({hi} vs {lo} studies):")
    for backend in ("sqlite", "postgres"):
        fig = results.get(backend)
        if not fig:
            continue
        rows = []
        for q in names:
            if (q, lo) in fig.median and (q, hi) in fig.median:
                ratio = fig.median[q, hi] / fig.median[q, lo]
                rows.append(
                    [
                        q,
                        f"{fig.median[q, lo]:.1f}",
                        f"{fig.median[q, hi]:.1f}",
                        f"{ratio:.2f}",
                        "ok" if ratio <= 2 else "MISSED",
                    ]
                )
        empty, last = fig.stow.get(0), fig.stow.get(max(fig.stow))
        if empty and last:
            rows.append(
                [
                    f"STOW throughput at {max(fig.stow)} vs empty (inst/s)",
                    f"{empty:.0f}",
                    f"{last:.0f}",
                    f"{last / empty:.2f}",
                    "ok" if last / empty >= 0.9 else "MISSED",
                ]
            )
        print(f"\n{backend}: target ≤ 2 (STOW ≥ 0.9)")
        print(table(["query", f"{lo} ms", f"{hi} ms", "ratio", "target"], rows))
        peer = results.get("orthanc")
        if peer:
            q = names[0]
            both = [n for n in sizes if (q, n) in fig.median and (q, n) in peer.median]
            rows = [
                [
                    str(n),
                    f"{fig.median[q, n]:.1f}",
                    f"{peer.median[q, n]:.1f}",
                    f"{peer.median[q, n] / fig.median[q, n]:.1f}",
                    "ok" if peer.median[q, n] / fig.median[q, n] >= 10 else "MISSED",
                ]
                for n in both
            ]
            print(f"\n{backend}: study list vs Orthanc (target ≥ 10)")
            print(table(["studies", f"{backend} ms", "Orthanc ms", "Orthanc / ours", "target"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated study counts (default 1000,10000,100000)")
    ap.add_argument("--backends", default="sqlite,postgres,orthanc")
    ap.add_argument("--orthanc-max", type=int, default=100_000, help="largest size loaded into Orthanc")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--peer-runs", type=int, default=10, help="runs per query on Orthanc (slow at 100k)")
    ap.add_argument("--quick", action="store_true", help="1000 and 5000 studies, 15 runs")
    ap.add_argument("--explain", action="store_true", help="print each query's plan at every size")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1000,5000" if args.quick else "1000,10000,100000")).split(",")]
    runs = 15 if args.quick and args.runs == 40 else args.runs
    if min(sizes) < 300:
        ap.error("sizes start at 300 studies (the queries' fixed answers need them)")
    results: dict[str, Figures] = {}
    for backend in args.backends.split(","):
        backend_sizes = [n for n in sizes if backend != "orthanc" or n <= args.orthanc_max]
        if not backend_sizes:
            continue
        t0 = time.perf_counter()
        fig = run_backend(
            backend, backend_sizes, min(runs, args.peer_runs) if backend == "orthanc" else runs, args.explain
        )
        if fig is not None:
            results[backend] = fig
            print(f"[{backend}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    report(results, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
