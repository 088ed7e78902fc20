"""Benchmark our DICOMweb server against Orthanc + its DICOMweb plugin.

    python -m bench.server_bench            # full corpus (300-slice CT, 500 studies)
    python -m bench.server_bench --quick    # smoke run (60 slices, 50 studies)

Both servers get the same corpus through the same client (a lean keep-alive
http.client wrapper, same batching and concurrency). Every step, the load
included, alternates between the servers in slices/repetitions, so
background load on a shared machine hits both alike; only one server is
ever being exercised at a time. Every timed answer is also checked (status,
counts, pixel hashes), so a fast wrong answer is reported as wrong instead of
winning.

This module is what is measured and the report; the pieces other benchmarks
reuse are modules of their own: bench.servers (start-up, idle and disk
watching), bench.stow (loading), bench.load (timed and concurrent GETs),
bench.checks (answer checks), bench.http_client and bench.dicomweb_urls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.checks import check_frames, metadata_check, qido_check
from bench.corpus import QUICK_CT_SLICES, QUICK_SMALL_STUDIES, Corpus, build_corpus, corpus_size
from bench.dicomweb_urls import (
    DICOM_JSON,
    FRAME_ACCEPT,
    FRAME_NATIVE_ACCEPT,
    frame_urls,
    series_metadata_url,
    study_list_url,
)
from bench.http_client import Client, Response
from bench.load import BROWSER_CONNECTIONS, fetch_all, interleave, latency
from bench.measure import Measure, markdown_table
from bench.processes import cpu_seconds
from bench.servers import ServerHandle, dir_bytes, start_ours, start_peer, try_start, wait_disk_stable
from bench.stow import (
    STOW_CONCURRENCY,
    STOW_MAX_BYTES,
    STOW_MAX_INSTANCES,
    StowBatch,
    load_servers,
    prepare_stow,
)

# --------------------------------------------------------------------------
# The suite


@dataclass
class Results:
    server: str
    description: str
    stow_ips: Measure | None = None
    ingest_ips: Measure | None = None
    qido_all_ms: Measure | None = None
    qido_prefix_ms: Measure | None = None
    metadata_ms: Measure | None = None
    frames_fps: Measure | None = None
    frames_first_fps: Measure | None = None
    frames_native_fps: Measure | None = None
    series_native_first_ms: Measure | None = None
    series_native_fps: Measure | None = None
    disk_bytes: Measure | None = None
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [f"{k}: {m.problem}" for k, m in vars(self).items() if isinstance(m, Measure) and m.problem]


@dataclass
class Settings:
    query_runs: int = 20
    metadata_runs: int = 10
    frame_passes: int = 7
    disk_settle_s: float = 40.0  # > our server's 30 s grace before deleting a replaced received file
    name_prefix: str = "DOE"


def frames_first_and_passes(
    clients: dict[str, Client], servers: dict[str, ServerHandle], corpus: Corpus, passes: int
) -> tuple[dict[str, Measure], dict[str, Measure]]:
    """Frame throughput: one first pass per server, then interleaved passes (median)."""
    headers = {"Accept": FRAME_ACCEPT}
    urls = {n: frame_urls(s.dicomweb_url, corpus) for n, s in servers.items()}
    first: dict[str, Measure] = {}
    rates: dict[str, list[float]] = {n: [] for n in servers}
    problems: dict[str, str | None] = dict.fromkeys(servers)
    seen: dict[str, str] = {}
    for name in servers:
        # Reported apart: a server that transcodes or caches on first
        # access looks different on the first pass after the load.
        secs, answers = fetch_all(clients[name], urls[name], headers)
        verdict = check_frames(corpus, answers)
        problems[name], seen[name] = verdict.problem, verdict.seen
        detail = (
            f"{secs:.2f} s; transfer syntaxes: {seen[name]}; "
            f"{verdict.payload_bytes / len(answers) / 1e3:.0f} kB/frame on the wire"
        )
        if verdict.warnings:
            detail += f"; ⚠ {verdict.warnings}"
        first[name] = Measure(len(answers) / secs, problems[name], detail)
        del answers  # ~150 MB for the full CT

    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    count: dict[str, int] = dict.fromkeys(servers, 0)

    def step(name: str, _i: int) -> None:
        c0 = cpu_seconds(servers[name].pid)
        secs, answers = fetch_all(clients[name], urls[name], headers)
        cpu[name] += cpu_seconds(servers[name].pid) - c0
        count[name] += len(answers)
        rates[name].append(len(answers) / secs)
        problems[name] = problems[name] or check_frames(corpus, answers).problem

    interleave(list(servers), passes, step)
    steady = {}
    for n, r in rates.items():
        detail = "passes: " + ", ".join(f"{x:.0f}" for x in r) + f" frames/s; {seen[n]}"
        if servers[n].pid and count[n]:
            detail += f"; server CPU ≈ {cpu[n] / count[n] * 1000:.2f} ms/frame"
        steady[n] = Measure(statistics.median(r), problems[n], detail)
    return first, steady


def frames_native(
    clients: dict[str, Client], servers: dict[str, ServerHandle], corpus: Corpus
) -> dict[str, Measure]:
    """One pass asking explicitly for uncompressed frames, as clients without
    a JPEG 2000 decoder do: costs a decode per frame on a server that keeps
    compressed masters."""
    headers = {"Accept": FRAME_NATIVE_ACCEPT}
    out = {}
    for name, server in servers.items():
        c0 = cpu_seconds(server.pid)
        secs, answers = fetch_all(clients[name], frame_urls(server.dicomweb_url, corpus), headers)
        cpu = cpu_seconds(server.pid) - c0
        verdict = check_frames(corpus, answers)
        detail = f"{secs:.2f} s; {verdict.seen}"
        if server.pid:
            detail += f"; server CPU ≈ {cpu / len(answers) * 1000:.2f} ms/frame"
        out[name] = Measure(len(answers) / secs, verdict.problem, detail)
        del answers
    return out


def series_read_native(
    clients: dict[str, Client], servers: dict[str, ServerHandle], corpus: Corpus
) -> dict[str, tuple[Measure, Measure]]:
    """What dicomweb-client and research tools do with a series they have not opened before: its metadata,
    then every frame uncompressed, one request after another on one connection. Run once per server while
    the series is cold (right after the load). (first frame ms, frames/s from the metadata request on)."""
    out = {}
    for name, server in servers.items():
        client = clients[name]
        urls = frame_urls(server.dicomweb_url, corpus)
        t0 = time.perf_counter()
        meta = client.get(series_metadata_url(server.dicomweb_url, corpus), {"Accept": DICOM_JSON})
        answers: list[Response | Exception] = []
        first = 0.0
        for i, url in enumerate(urls):
            t1 = time.perf_counter()
            answers.append(client.get(url, {"Accept": FRAME_NATIVE_ACCEPT}))
            if i == 0:
                first = time.perf_counter() - t1
        secs = time.perf_counter() - t0
        verdict = check_frames(corpus, answers)
        problem = verdict.problem or (None if meta.status_code == 200 else f"metadata: {meta.status_code}")
        out[name] = (
            Measure(first * 1000, problem, f"first frame request after the metadata; {verdict.seen}"),
            Measure(len(answers) / secs, problem, f"{secs:.2f} s for metadata and {len(answers)} frames"),
        )
        del answers
    return out


def run_suite(
    servers: Sequence[ServerHandle],
    corpus: Corpus,
    batches: Sequence[StowBatch],
    cfg: Settings,
    log: Callable[[str], None] = print,
) -> dict[str, Results]:
    """Load the corpus into every server, then measure them; every step
    alternates between the servers (see interleave())."""
    by_name = {s.name: s for s in servers}
    pids = {s.name: s.pid for s in servers}
    res = {s.name: Results(s.name, s.description) for s in servers}
    clients = {s.name: Client() for s in servers}
    try:
        for name, loaded in load_servers(servers, clients, batches, log=log).items():
            res[name].stow_ips, res[name].ingest_ips = loaded.stow, loaded.ingest
        disk_after_load = {s.name: dir_bytes(s.data_dirs) for s in servers}

        log("series opened cold: metadata, then every frame uncompressed, sequentially ...")
        for n, (first_ms, fps) in series_read_native(clients, by_name, corpus).items():
            res[n].series_native_first_ms, res[n].series_native_fps = first_ms, fps

        json_accept = {"Accept": DICOM_JSON}
        log("QIDO study list ...")
        expected_all = min(101, corpus.study_count)
        expected_prefix = min(101, corpus.studies_matching_prefix(cfg.name_prefix))
        for attr, pattern, check in (
            ("qido_all_ms", "*", qido_check(expected_all)),
            ("qido_prefix_ms", f"{cfg.name_prefix}*", qido_check(expected_prefix, cfg.name_prefix)),
        ):
            urls = {n: study_list_url(s.dicomweb_url, pattern) for n, s in by_name.items()}
            checks = dict.fromkeys(by_name, check)
            for n, m in latency(clients, urls, json_accept, checks, cfg.query_runs, pids=pids).items():
                setattr(res[n], attr, m)

        log(f"series metadata ({len(corpus.ct_sop_uids)} instances) ...")
        urls = {n: series_metadata_url(s.dicomweb_url, corpus) for n, s in by_name.items()}
        md_check = metadata_check(corpus.ct_sop_uids)
        checks = dict.fromkeys(by_name, md_check)
        # With gzip, as browsers (OHIF) ask for it: what crosses a real network is the compressed body.
        gzip_accept = {**json_accept, "Accept-Encoding": "gzip"}
        for n, m in latency(clients, urls, gzip_accept, checks, cfg.metadata_runs, pids=pids).items():
            res[n].metadata_ms = m

        log(f"frames ({len(corpus.ct_sop_uids)} per pass, {cfg.frame_passes + 1} passes per server) ...")
        first, steady = frames_first_and_passes(clients, by_name, corpus, cfg.frame_passes)
        for n in by_name:
            res[n].frames_first_fps, res[n].frames_fps = first[n], steady[n]
        log("frames, uncompressed requested ...")
        for n, m in frames_native(clients, by_name, corpus).items():
            res[n].frames_native_fps = m

        # Measured last, once stable: deferred clean-up after background
        # transcoding changes the figure for a while after the load.
        log(f"waiting until disk usage is stable for {cfg.disk_settle_s:.0f} s ...")
        settled = wait_disk_stable(servers, cfg.disk_settle_s)
        for n, server in by_name.items():
            caches = dir_bytes([d / "cache" for d in server.data_dirs])  # ours: decoded frames, HTJ2K
            res[n].disk_bytes = Measure(
                settled[n],
                None,
                f"{disk_after_load[n] / 1e6:.1f} MB right after load, "
                f"{settled[n] / 1e6:.1f} MB once stable, of which caches "
                f"{caches / 1e6:.1f} MB",
            )
            if res[n].problems():
                res[n].notes.append("server log tail:\n" + server.log_tail())
    finally:
        for c in clients.values():
            c.close()
    return res


# --------------------------------------------------------------------------
# Report


@dataclass
class Row:
    label: str
    attr: str
    unit: str
    higher_is_better: bool
    target: float | None  # minimum "ours vs Orthanc" factor, None = informational
    fmt: str = "{:.1f}"
    scale: float = 1.0


def report_rows(corpus: Corpus, cfg: Settings) -> list[Row]:
    n = len(corpus.ct_sop_uids)
    return [
        Row(f"STOW-RS load, {len(corpus.files)} instances (instances/s)", "stow_ips", "inst/s", True, 1.0),
        Row("Ingest until idle, incl. background work (instances/s)", "ingest_ips", "inst/s", True, None),
        Row("QIDO study list `PatientName=*` limit 101 (median ms)", "qido_all_ms", "ms", False, 1.0),
        Row(
            f"QIDO study list `PatientName={cfg.name_prefix}*` (median ms)",
            "qido_prefix_ms",
            "ms",
            False,
            1.0,
        ),
        Row(
            f"Series metadata, {n} instances, gzip as browsers ask (median ms)",
            "metadata_ms",
            "ms",
            False,
            50.0,
        ),
        Row(
            f"Frames, {n} x 1 request, {BROWSER_CONNECTIONS} concurrent (frames/s)",
            "frames_fps",
            "fps",
            True,
            1.0,
            "{:.0f}",
        ),
        Row("Frames, first pass after load (frames/s)", "frames_first_fps", "fps", True, None, "{:.0f}"),
        Row(
            "Frames, `transfer-syntax=1.2.840.10008.1.2.1` requested, 1 pass (frames/s)",
            "frames_native_fps",
            "fps",
            True,
            None,
            "{:.0f}",
        ),
        Row(
            f"Series opened cold: metadata, then {n} frames uncompressed, sequential (frames/s)",
            "series_native_fps",
            "fps",
            True,
            1.0,
            "{:.0f}",
        ),
        Row("  its first frame (ms)", "series_native_first_ms", "ms", False, None),
        Row("Bytes on disk after load, once stable (MB)", "disk_bytes", "MB", False, 1.0, "{:.1f}", 1e-6),
    ]


def _cell(m: Measure | None, row: Row) -> str:
    if m is None:
        return "skipped"
    if m.value is None:
        return "error"
    text = row.fmt.format(m.value * row.scale)
    return f"{text} ✗" if m.problem else text


def ratio(ours: Measure | None, peer: Measure | None, higher_is_better: bool) -> float | None:
    """Factor > 1 means ours is better; None if either side is missing or wrong."""
    if not ours or not peer or ours.value is None or peer.value is None or ours.problem or peer.problem:
        return None
    if ours.value == 0 or peer.value == 0:
        return None
    return ours.value / peer.value if higher_is_better else peer.value / ours.value


def format_table(rows: Sequence[Row], ours: Results | None, peer: Results | None) -> str:
    cells = []
    for row in rows:
        om = getattr(ours, row.attr) if ours else None
        pm = getattr(peer, row.attr) if peer else None
        r = ratio(om, pm, row.higher_is_better)
        target = f">= {row.target:g}x" if row.target else "info"
        if r is None:
            wrong = (om and om.problem) or (pm and pm.problem)
            rtxt, met = ("wrong answer" if wrong else "—"), ("no" if om and om.problem else "—")
        else:
            rtxt = f"{r:.2f}"
            met = "—" if row.target is None else ("yes" if r >= row.target else "no")
        cells.append([row.label, _cell(om, row), _cell(pm, row), rtxt, target, met])
    header = ["Metric", "Ours", "Orthanc", "Ours vs Orthanc (x, > 1 = ours better)", "Target", "Met"]
    return "\n".join(markdown_table(header, cells, "lrrrrc"))


def format_details(rows: Sequence[Row], results: Sequence[Results]) -> str:
    out = []
    for res in results:
        out.append(f"- **{res.server}** ({res.description})")
        for row in rows:
            m: Measure | None = getattr(res, row.attr)
            if m is None:
                continue
            flag = f" — **WRONG: {m.problem}**" if m.problem else ""
            out.append(f"  - {row.label}: {m.detail}{flag}")
        out += [f"  - note: {n}" for n in res.notes]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Main


def format_header(corpus: Corpus, cfg: Settings, quick: bool, load: tuple[float, float]) -> str:
    return "\n".join(
        [
            f"### DICOMweb server benchmark ({'quick' if quick else 'full'} corpus)",
            "",
            (
                f"Corpus: {len(corpus.files)} instances / {corpus.study_count} studies "
                f"({corpus.total_bytes() / 1e6:.0f} MB): a {len(corpus.ct_sop_uids)}-slice CT series "
                f"({corpus.ct_rows}x{corpus.ct_columns}, 16-bit), WG04 CR/MR/US, "
                f"{corpus.small_studies} small CT studies. "
                f"Client: Python http.client, keep-alive, no gzip. STOW: {STOW_CONCURRENCY} concurrent "
                f"requests of ≤ {STOW_MAX_INSTANCES} instances / {STOW_MAX_BYTES >> 20} MiB. "
                f"Queries: sequential, median of {cfg.query_runs} (metadata {cfg.metadata_runs}) after "
                f"2 warm-ups. Frames: {BROWSER_CONNECTIONS} concurrent, median of {cfg.frame_passes} passes. "
                f"Load, queries and frame passes alternate between the servers. "
                f"Host: {platform.machine()}, {os.cpu_count()} CPUs shared by client and servers, "
                f"load average "
                f"{load[0]:.1f} before / {load[1]:.1f} after; Python {platform.python_version()}."
            ),
            "",
            (
                "Ratios are oriented so that **> 1 means our server is better** "
                "(faster, or smaller on disk). "
                "✗ marks a wrong answer, which never counts as a win."
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_CT_SLICES} CT slices, {QUICK_SMALL_STUDIES} small studies",
    )
    p.add_argument("--only", choices=("ours", "orthanc"), help="benchmark a single server")
    p.add_argument(
        "--cache", type=Path, default=None, help="corpus cache dir (default ~/.cache/dicomweb-bench)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)

    cfg = Settings(query_runs=10, metadata_runs=5, frame_passes=2) if args.quick else Settings()
    corpus = build_corpus(*corpus_size(args.quick), cache=args.cache)
    batches = prepare_stow(corpus.paths())
    print(
        f"corpus: {corpus.root} — {len(corpus.files)} instances, {corpus.study_count} studies, "
        f"{corpus.total_bytes() / 1e6:.1f} MB; CT series of {len(corpus.ct_sop_uids)} slices "
        f"{corpus.ct_rows}x{corpus.ct_columns}",
        flush=True,
    )

    started: list[ServerHandle | None] = []
    load_before = os.getloadavg()[0]
    with ExitStack() as stack:
        if args.only in (None, "ours"):
            started.append(try_start(stack, "ours", start_ours))
        if args.only in (None, "orthanc"):
            started.append(start_peer(stack))
        servers = [s for s in started if s]
        results = (
            run_suite(servers, corpus, batches, cfg, log=lambda m: print(m, flush=True)) if servers else {}
        )
    ours, peer = results.get("ours"), results.get("orthanc")
    load_after = os.getloadavg()[0]

    rows = report_rows(corpus, cfg)
    print()
    print(format_header(corpus, cfg, args.quick, (load_before, load_after)))
    print()
    print(format_table(rows, ours, peer))
    print()
    print(format_details(rows, [r for r in (ours, peer) if r]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"ours": asdict(ours) if ours else None, "orthanc": asdict(peer) if peer else None},
                indent=1,
                default=str,
            )
        )
    wrong = [r for r in (ours, peer) if r and r.problems()]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
