"""Masters under sustained ingest: do fresh studies become progressive while a hospital keeps sending?

Run from the repository: ``python -m bench.sustained_bench [--quick] [--rates 0.5,1.0] [--minutes 4]``.

1. Calibration (unless ``--max-rate``): on a fresh server, STOW back-to-back with 4 requests in flight for
   a few seconds; the acknowledged instances per second are the machine's maximum ingest rate.
2. For each rate (a share of that maximum), on a fresh server, for ``--minutes``:
   - STOW of 5-20-slice CT series (each a new study, made from the WG04 CT with fresh UIDs), paced to the
     rate by a few threads;
   - OHIF's reading pattern on the newest stored studies, by the other threads: study list QIDO (OHIF's
     query, ``limit=101``), series QIDO, series ``/metadata``, a preview cut of every slice
     (``frames/1?layers=1&fsiz=128,128``, ``Accept: multipart/related; type="image/jp2"``) then every
     frame (``transfer-syntax=*``, OHIF's default);
   - ``/status`` every 5 s (backlog, age of the oldest job, masters per second);
   - the time from acknowledgement to master of a sample of instances the readers never touch (so nothing
     hurries them), seen by polling the server's SQLite index read-only every 0.5 s.
   Then the load stops and the time until the backlog is clear is measured (capped).
3. Per rate: the backlog over time, cut answers (200 within 1 s, 503, other non-2xx, latency), time to
   master, time to clear, and the targets of issue 15 as yes/no: at about half the maximum the backlog
   stays bounded and every cut gets a 200 within 1 s; at about the maximum no cut gets a 503.

Every answer is checked (status, and for cuts the JPEG 2000 part labelled .91); exceptions in the load
threads are counted and printed, never swallowed. The machine is shared: the load average is printed at
the start and the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import os
import random
import secrets
import sqlite3
import statistics
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from bench.checks import check_stow_answer
from bench.corpus import CT_SOURCE, DEFAULT_SEED, vary_slice, wg04_path
from bench.dicomweb_urls import DICOM_JSON, FRAME_ACCEPT, STUDY_LIST_INCLUDE, series_url
from bench.http_client import (
    CLIENT_ERRORS,
    Client,
    Response,
    content_type_params,
    multipart_body,
    parse_multipart,
)
from bench.measure import markdown_table
from bench.processes import cpu_seconds
from bench.servers import ServerHandle, start_ours

CUT = "layers=1&fsiz=128,128"
CUT_ACCEPT = 'multipart/related; type="image/jp2"'
CUT_SYNTAX = "1.2.840.10008.1.2.4.91"  # a cut (or a preview encoded on the fly) is never lossless
CUT_DEADLINE = 1.0  # seconds: the target is a 200 within this
STATUS_EVERY = 5.0
INDEX_POLL = 0.5
CALIBRATION_IN_FLIGHT = 4

# Fixed-width placeholders in the templates, replaced byte for byte by fresh values of the same length.
UID_DIGITS = 38  # "2.25." + 38 digits: 43 characters, below 2**128 as 2.25 UIDs must be
PLACEHOLDER_STUDY = "2.25." + "1" * UID_DIGITS
PLACEHOLDER_SERIES = "2.25." + "2" * UID_DIGITS
PLACEHOLDER_SOP = "2.25." + "3" * UID_DIGITS
PLACEHOLDER_PATIENT = "SUS0000000"


def new_uid() -> str:
    return f"2.25.{10 ** (UID_DIGITS - 1) + secrets.randbelow(9 * 10 ** (UID_DIGITS - 1))}"


def log(msg: str) -> None:
    print(msg, flush=True)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# --------------------------------------------------------------------------
# What is sent: CT series with fresh UIDs


@dataclass
class Series:
    study: str
    series: str
    sops: list[str]
    tracked: bool  # acknowledgement-to-master sample: readers never touch it
    acked: float | None = None  # time.monotonic() of the STOW acknowledgement


class SeriesMaker:
    """CT slices made once from the WG04 CT (vary_slice), as Part 10 bytes with placeholder UIDs; a
    series is those bytes with the placeholders replaced, so the client spends next to no CPU on it."""

    def __init__(self, max_slices: int, seed: int = DEFAULT_SEED) -> None:
        src = pydicom.dcmread(wg04_path(CT_SOURCE))
        base = src.pixel_array
        bits = int(src.BitsStored)
        lo, hi = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            if src.PixelRepresentation == 1
            else (0, (1 << bits) - 1)
        )
        padding = int(src.PixelPaddingValue) if "PixelPaddingValue" in src else None
        thickness = float(src.SliceThickness)
        x0, y0, z0 = (float(v) for v in src.ImagePositionPatient)
        today = dt.date.today().strftime("%Y%m%d")
        self.templates: list[bytes] = []
        for i in range(max_slices):
            ds = pydicom.dcmread(wg04_path(CT_SOURCE))
            for tag in [e.tag for e in ds if e.tag.element == 0 and e.tag.group != 0x0002]:
                del ds[tag]  # group lengths
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
                PLACEHOLDER_STUDY,
                PLACEHOLDER_SERIES,
                PLACEHOLDER_SOP,
            )
            ds.PatientName = "SUSTAINED^INGEST"
            ds.PatientID = PLACEHOLDER_PATIENT
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
            ds.StudyTime = ds.SeriesTime = "120000"
            ds.StudyDescription = "CT SUSTAINED INGEST"
            ds.SeriesDescription = "AXIAL"
            ds.InstanceNumber = i + 1
            z = z0 - i * thickness
            ds.ImagePositionPatient = [x0, y0, round(z, 3)]
            ds.SliceLocation = round(z, 3)
            ds.PixelData = vary_slice(base, i, max_slices, seed, padding, lo, hi).tobytes()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
            for placeholder in (PLACEHOLDER_STUDY, PLACEHOLDER_SERIES, PLACEHOLDER_PATIENT):
                if data.count(placeholder.encode()) != 1:
                    raise RuntimeError(f"template {i}: placeholder {placeholder} not found exactly once")
            self.templates.append(data)
        self.patients = 0
        self.lock = threading.Lock()

    def make(self, slices: int, tracked: bool) -> tuple[Series, bytes, str]:
        """A new study of `slices` slices: its description, the STOW body and its Content-Type."""
        with self.lock:
            self.patients += 1
            patient = f"SUS{self.patients:07d}"
        s = Series(new_uid(), new_uid(), [new_uid() for _ in range(slices)], tracked)
        parts = []
        for template, sop in zip(self.templates, s.sops, strict=False):
            parts.append(
                template.replace(PLACEHOLDER_STUDY.encode(), s.study.encode())
                .replace(PLACEHOLDER_SERIES.encode(), s.series.encode())
                .replace(PLACEHOLDER_SOP.encode(), sop.encode())
                .replace(PLACEHOLDER_PATIENT.encode(), patient.encode())
            )
        body, ctype = multipart_body(parts)
        return s, body, ctype


# --------------------------------------------------------------------------
# Book-keeping shared by the threads


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class Kind:
    """The answers to one kind of request."""

    n: int = 0
    ok: int = 0  # 2xx
    s503: int = 0
    other: Counter[int] = field(default_factory=Counter)  # other non-2xx statuses
    failed: int = 0  # no answer (connection error)
    wrong: Counter[str] = field(default_factory=Counter)  # 2xx but not the right answer
    ms: list[float] = field(default_factory=list)
    fast_ok: int = 0  # 2xx, right, within CUT_DEADLINE
    bodies: Counter[str] = field(default_factory=Counter)  # non-2xx answers: status and body (start)


class Run:
    """Everything the threads of one run share."""

    def __init__(self, server: ServerHandle, maker: SeriesMaker, client: Client) -> None:
        self.server = server
        self.url = server.dicomweb_url
        self.maker = maker
        self.client = client
        self.stop = threading.Event()  # the load stops
        self.done = threading.Event()  # the whole run stops (samplers)
        self.lock = threading.Lock()
        self.kinds: dict[str, Kind] = {}
        self.errors: Counter[str] = Counter()  # exceptions in threads, by thread role and type
        self.error_samples: list[str] = []
        self.readable: deque[Series] = deque(maxlen=64)  # stored, untracked, newest last
        self.stored = 0  # instances acknowledged
        self.series_sent = 0
        self.tracked: dict[str, Series] = {}  # sop -> series, registered before its STOW
        self.mastered_at: dict[str, float] = {}  # tracked sop -> first time.monotonic() seen with a master
        self.samples: list[dict] = []  # /status samples with "t" (seconds since the load started)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, seconds: float, r: Response | None, problem: str | None = None) -> None:
        with self.lock:
            k = self.kinds.setdefault(kind, Kind())
            k.n += 1
            k.ms.append(seconds * 1000)
            if r is None:
                k.failed += 1
            elif 200 <= r.status_code < 300:
                k.ok += 1
                if problem:
                    k.wrong[problem] += 1
                elif seconds <= CUT_DEADLINE:
                    k.fast_ok += 1
            else:
                if r.status_code == 503:
                    k.s503 += 1
                else:
                    k.other[r.status_code] += 1
                key = f"{r.status_code} {r.text[:160]}"
                if key in k.bodies or len(k.bodies) < 10:
                    k.bodies[key] += 1

    def thread_error(self, role: str, exc: BaseException) -> None:
        with self.lock:
            self.errors[f"{role}: {type(exc).__name__}"] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{role}: {''.join(traceback.format_exception(exc)).strip()}")


def guarded(run: Run, role: str, body: Callable[[], None], done: threading.Event) -> Callable[[], None]:
    """A thread body that calls `body` until `done` is set; an exception is counted, not swallowed
    silently, and the loop goes on after a short pause (a dead thread would skew the load)."""

    def loop() -> None:
        while not done.is_set():
            try:
                body()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                run.thread_error(role, exc)
                done.wait(0.5)

    return loop


def start_threads(targets: Iterable[tuple[str, Callable[[], None]]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in targets]
    for t in threads:
        t.start()
    return threads


def join_all(run: Run, threads: Sequence[threading.Thread], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            run.thread_error(t.name, RuntimeError(f"thread {t.name} did not stop within {timeout:.0f} s"))


# --------------------------------------------------------------------------
# The load


def timed(
    run: Run, kind: str, url: str, headers: dict[str, str], check: Callable[[Response], str | None]
) -> Response | None:
    t0 = time.perf_counter()
    try:
        r = run.client.get(url, headers=headers)
    except CLIENT_ERRORS:
        run.record(kind, time.perf_counter() - t0, None)
        return None
    seconds = time.perf_counter() - t0
    problem = check(r) if 200 <= r.status_code < 300 else None
    run.record(kind, seconds, r, problem)
    return r


def json_list(r: Response) -> str | None:
    try:
        return None if isinstance(r.json(), list) else "not a JSON array"
    except ValueError:
        return "not JSON"


def one_part(media: str, syntax: str | None = None) -> Callable[[Response], str | None]:
    def check(r: Response) -> str | None:
        try:
            parts = parse_multipart(r.headers.get("content-type", ""), r.content)
        except ValueError as exc:
            return str(exc)
        if len(parts) != 1 or not parts[0][1]:
            return f"{len(parts)} parts / empty part"
        mime, params = content_type_params(parts[0][0].get("content-type", ""))
        if media and mime != media:
            return f"part of type {mime!r}, expected {media}"
        if syntax and params.get("transfer-syntax") != syntax:
            return f"part labelled {params.get('transfer-syntax')!r}, expected {syntax}"
        return None

    return check


def stow_series(run: Run, slices: int, tracked: bool) -> None:
    s, body, ctype = run.maker.make(slices, tracked)
    if tracked:
        with run.lock:
            for sop in s.sops:
                run.tracked[sop] = s
    t0 = time.perf_counter()
    try:
        r = run.client.post(f"{run.url}/studies", body, {"Content-Type": ctype, "Accept": DICOM_JSON})
    except CLIENT_ERRORS:
        run.record("STOW (series)", time.perf_counter() - t0, None)
        raise
    seconds = time.perf_counter() - t0
    problem = check_stow_answer(r, slices)
    run.record("STOW (series)", seconds, r, problem if r.status_code == 200 else None)
    if r.status_code != 200 or problem:
        return
    s.acked = time.monotonic()
    with run.lock:
        run.stored += slices
        run.series_sent += 1
        if not tracked:
            run.readable.append(s)


class Pacer:
    """Hands out start times so that the threads together send `rate` instances per second (no debt is
    built up: a thread that is late starts at once, and the rate achieved is what is reported)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def slot(self, instances: int) -> float:
        with self.lock:
            start = max(self.next, time.monotonic())
            self.next = start + instances / self.rate
            return start


def stow_loop(
    run: Run, pacer: Pacer | None, sizes: tuple[int, int], track_every: int, rng: random.Random
) -> Callable[[], None]:
    def body() -> None:
        slices = rng.randint(*sizes)
        if pacer is not None:
            start = pacer.slot(slices)
            if run.stop.wait(max(0.0, start - time.monotonic())):
                return
        with run.lock:
            tracked = track_every > 0 and run.series_sent % track_every == track_every - 1
        stow_series(run, slices, tracked)

    return body


def reader_loop(run: Run, rng: random.Random) -> Callable[[], None]:
    """One OHIF session per call: study list, then one of the newest stored studies (never a tracked one):
    its series, their metadata, a preview cut of every slice, then every frame."""
    headers_json = {"Accept": DICOM_JSON}
    study_list = f"{run.url}/studies?limit=101&offset=0&fuzzymatching=false&includefield={STUDY_LIST_INCLUDE}"
    cut_check = one_part("image/jp2", CUT_SYNTAX)
    frame_check = one_part("")

    def body() -> None:
        with run.lock:
            newest = list(run.readable)[-4:]
        if not newest:
            run.stop.wait(0.2)
            return
        s = rng.choice(newest)
        timed(run, "study list QIDO", study_list, headers_json, json_list)
        timed(run, "series QIDO", f"{run.url}/studies/{s.study}/series", headers_json, json_list)
        base = series_url(run.url, s.study, s.series)
        timed(run, "series /metadata", f"{base}/metadata", headers_json, json_list)
        for sop in s.sops:
            if run.stop.is_set():
                return
            timed(
                run,
                "cut layers=1&fsiz=128,128",
                f"{base}/instances/{sop}/frames/1?{CUT}",
                {"Accept": CUT_ACCEPT},
                cut_check,
            )
        for sop in s.sops:
            if run.stop.is_set():
                return
            timed(
                run,
                "frame (transfer-syntax=*)",
                f"{base}/instances/{sop}/frames/1",
                {"Accept": FRAME_ACCEPT},
                frame_check,
            )

    return body


def status_loop(run: Run) -> Callable[[], None]:
    def body() -> None:
        r = run.client.get(f"{run.url}/status")
        if r.status_code != 200:
            raise RuntimeError(f"/status answered {r.status_code}: {r.text[:200]}")
        doc = r.json()
        assert isinstance(doc, dict)
        with run.lock:
            run.samples.append(
                {"t": run.elapsed(), "loading": not run.stop.is_set(), "stored": run.stored, **doc}
            )
        run.done.wait(STATUS_EVERY)

    return body


def index_loop(run: Run) -> Callable[[], None]:
    """Poll the server's index read-only: when each tracked instance first has a master. Nothing is asked
    of the server, so nothing is hurried."""
    path = run.server.data_dirs[0] / "index.sqlite"
    state: dict[str, sqlite3.Connection] = {}

    def body() -> None:
        conn = state.get("conn")
        if conn is None:
            conn = state["conn"] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        rows = conn.execute("SELECT sop_uid FROM instances WHERE fidelity IS NOT NULL").fetchall()
        now = time.monotonic()
        with run.lock:
            for (sop,) in rows:
                if sop in run.tracked and sop not in run.mastered_at:
                    run.mastered_at[sop] = now
        run.done.wait(INDEX_POLL)

    def closing() -> None:
        try:
            body()
        finally:
            if run.done.is_set() and "conn" in state:
                state.pop("conn").close()

    return closing


# --------------------------------------------------------------------------
# Calibration and one rate


def calibrate(maker: SeriesMaker, sizes: tuple[int, int], seconds: float) -> float:
    """Acknowledged instances per second of back-to-back STOWs, 4 in flight, on a fresh server."""
    with start_ours() as server, Client() as client:
        run = Run(server, maker, client)
        rng = random.Random(1)
        threads = start_threads(
            (
                f"calibrate-{i}",
                guarded(run, "calibration STOW", stow_loop(run, None, sizes, 0, rng), run.stop),
            )
            for i in range(CALIBRATION_IN_FLIGHT)
        )
        run.stop.wait(seconds)
        run.stop.set()
        join_all(run, threads)
        wall = run.elapsed()
        stow = run.kinds.get("STOW (series)", Kind())
        rate = run.stored / wall if wall else 0.0
        log(
            f"calibration: {run.stored} instances in {stow.ok} STOWs, {wall:.1f} s "
            f"(median STOW {statistics.median(stow.ms) if stow.ms else 0:.0f} ms): {rate:.1f} instances/s"
        )
        if run.errors or stow.n != stow.ok:
            raise RuntimeError(
                f"calibration failed: {dict(run.errors)} {run.error_samples[:1]} "
                f"{stow.n - stow.ok} STOW(s) not 2xx"
            )
        return rate


@dataclass
class Outcome:
    share: float
    target: float
    achieved: float
    samples: list[dict]
    kinds: dict[str, Kind]
    errors: Counter[str]
    error_samples: list[str]
    to_master: list[float]  # seconds, for tracked instances that got their master
    tracked: int
    clear_seconds: float | None  # None: not clear within the cap
    clear_rate: float | None  # masters per second while clearing
    load_seconds: float
    server_cpu: float
    log_lines: list[str]


def server_log(server: ServerHandle) -> list[str]:
    """Warnings and errors in the server's log (its stdout, found through /proc)."""
    if server.pid is None:
        return []
    try:
        text = Path(os.readlink(f"/proc/{server.pid}/fd/1")).read_text(errors="replace")
    except OSError:
        return []
    marks = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Exception")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


def one_rate(maker: SeriesMaker, share: float, max_rate: float, args: argparse.Namespace) -> Outcome:
    target = share * max_rate
    log(
        f"\n== {share:.0%} of the maximum: {target:.1f} instances/s for {args.minutes:g} min "
        f"({args.stow_threads} STOW + {args.readers} reader threads); {load_line()}"
    )
    with start_ours() as server, Client(timeout=120) as client:
        run = Run(server, maker, client)
        pacer = Pacer(target)
        cpu0 = cpu_seconds(server.pid)
        load_threads = start_threads(
            [
                (
                    f"stow-{i}",
                    guarded(
                        run,
                        "STOW",
                        stow_loop(run, pacer, args.sizes, args.track_every, random.Random(100 + i)),
                        run.stop,
                    ),
                )
                for i in range(args.stow_threads)
            ]
            + [
                (f"reader-{i}", guarded(run, "reader", reader_loop(run, random.Random(200 + i)), run.stop))
                for i in range(args.readers)
            ]
        )
        samplers = start_threads(
            [
                ("status", guarded(run, "/status sampler", status_loop(run), run.done)),
                ("index", guarded(run, "index poller", index_loop(run), run.done)),
            ]
        )
        try:
            run.stop.wait(args.minutes * 60)
        finally:
            run.stop.set()
            join_all(run, load_threads, timeout=180)
        load_seconds = run.elapsed()
        server_cpu = cpu_seconds(server.pid) - cpu0
        achieved = run.stored / load_seconds
        log(
            f"load stopped after {load_seconds:.0f} s: {run.stored} instances stored ({achieved:.1f}/s); "
            f"waiting for the backlog to clear (at most {args.clear_cap:.0f} s) ..."
        )

        clear_seconds = clear_rate = None
        t_stop = time.monotonic()
        first_pending: int | None = None
        while time.monotonic() - t_stop < args.clear_cap:
            try:
                doc = client.get(f"{run.url}/status").json()
            except (*CLIENT_ERRORS, ValueError) as exc:
                run.thread_error("clearing /status", exc)
                time.sleep(1)
                continue
            assert isinstance(doc, dict)
            if first_pending is None:
                first_pending = int(doc["pending_masters"]) + int(doc.get("masters_in_progress") or 0)
            if doc["pending_masters"] == 0 and not doc.get("masters_in_progress"):
                clear_seconds = time.monotonic() - t_stop
                break
            time.sleep(1)
        if clear_seconds and first_pending:
            clear_rate = first_pending / clear_seconds
        time.sleep(1.5 * INDEX_POLL)  # the last masters into mastered_at
        run.done.set()
        join_all(run, samplers)

        to_master = [
            max(0.0, run.mastered_at[sop] - s.acked)
            for sop, s in run.tracked.items()
            if s.acked is not None and sop in run.mastered_at
        ]
        tracked = sum(1 for s in run.tracked.values() if s.acked is not None)
        return Outcome(
            share,
            target,
            achieved,
            run.samples,
            run.kinds,
            run.errors,
            run.error_samples,
            to_master,
            tracked,
            clear_seconds,
            clear_rate,
            load_seconds,
            server_cpu,
            server_log(server),
        )


# --------------------------------------------------------------------------
# The report


def fmt(v: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def seconds(v: float) -> str:
    """Seconds, or what an instance that never got its master counts as."""
    return "not reached (no master by the end)" if v == float("inf") else f"{v:.1f} s"


def backlog_rows(samples: list[dict]) -> list[list[str]]:
    """Samples thinned to about 16 rows under load and 8 while clearing (the last of each always)."""
    picked: list[dict] = []
    for part, rows in (
        ([s for s in samples if s["loading"]], 16),
        ([s for s in samples if not s["loading"]], 8),
    ):
        stride = max(1, math.ceil(len(part) / rows))
        chosen = part[::stride]
        if part and chosen[-1] is not part[-1]:
            chosen.append(part[-1])
        picked += chosen
    return [
        [
            f"{s['t']:.0f}",
            "load" if s["loading"] else "clearing",
            str(s["stored"]),
            str(s["pending_masters"]),
            fmt(s.get("oldest_pending_seconds"), 0),
            fmt(s.get("masters_per_second"), 2),
            str(s.get("masters_in_progress", "-")),
        ]
        for s in picked
    ]


def growth(samples: list[dict], load_seconds: float) -> tuple[float, float]:
    """(backlog growth per minute over the last half of the load (least squares), instances stored per
    minute over it)."""
    half = [s for s in samples if s["loading"] and s["t"] >= load_seconds / 2]
    if len(half) < 3:
        return 0.0, 0.0
    ts = [s["t"] for s in half]
    ys = [float(s["pending_masters"]) for s in half]
    slope = statistics.linear_regression(ts, ys).slope if len(set(ts)) > 1 else 0.0
    span = ts[-1] - ts[0]
    stored = (half[-1]["stored"] - half[0]["stored"]) / span * 60 if span else 0.0
    return slope * 60, stored


def bounded(o: Outcome) -> bool:
    """Not growing over the last half of the load: by less than 10 % of what was stored meanwhile (and by
    less than one 20-slice series a minute); too few samples to tell is a no."""
    if sum(1 for s in o.samples if s["loading"] and s["t"] >= o.load_seconds / 2) < 3:
        return False
    per_minute, stored_per_minute = growth(o.samples, o.load_seconds)
    return per_minute <= max(20.0, 0.1 * stored_per_minute)


def cut_kind(o: Outcome) -> Kind:
    return o.kinds.get("cut layers=1&fsiz=128,128", Kind())


def report(o: Outcome) -> list[str]:
    out = [
        (
            f"\n### {o.share:.0%} of the maximum ingest rate: target {o.target:.1f}, "
            f"achieved {o.achieved:.1f} "
            f"instances/s over {o.load_seconds:.0f} s; server CPU {o.server_cpu / o.load_seconds:.2f} cores"
        ),
        "",
    ]
    out += markdown_table(
        ["t (s)", "phase", "stored", "backlog", "oldest (s)", "masters/s", "in progress"],
        backlog_rows(o.samples),
        "rlrrrrr",
    )
    per_minute, stored_per_minute = growth(o.samples, o.load_seconds)
    out += [
        "",
        (
            f"Backlog over the last half of the load: {per_minute:+.0f} instances/min "
            f"(stored meanwhile: {stored_per_minute:.0f}/min)"
        ),
        "",
    ]
    rows = []
    for name, k in sorted(o.kinds.items()):
        others = ", ".join(f"{code} x{n}" for code, n in sorted(k.other.items())) or "0"
        wrong = "; ".join(f"{p} x{n}" for p, n in k.wrong.most_common(3)) or "0"
        rows.append(
            [
                name,
                str(k.n),
                str(k.ok),
                str(k.s503),
                others,
                str(k.failed),
                wrong,
                fmt(statistics.median(k.ms) if k.ms else None, 0),
                fmt(percentile(k.ms, 95) if k.ms else None, 0),
            ]
        )
    out += markdown_table(
        ["request", "n", "2xx", "503", "other non-2xx", "no answer", "wrong 2xx", "median ms", "p95 ms"],
        rows,
        "lrrrrrlrr",
    )
    cut = cut_kind(o)
    share = cut.fast_ok / cut.n if cut.n else 0.0
    out += [
        "",
        (
            f"Cuts: {cut.fast_ok} of {cut.n} answered 200 (right, labelled .91) within {CUT_DEADLINE:g} s "
            f"({share:.1%}); 503: {cut.s503}; other non-2xx: {sum(cut.other.values())}; "
            f"median {fmt(statistics.median(cut.ms) if cut.ms else None, 0)} ms, "
            f"p95 {fmt(percentile(cut.ms, 95) if cut.ms else None, 0)} ms"
        ),
    ]
    missing = o.tracked - len(o.to_master)
    if o.to_master:
        # Instances that never got a master count as slower than any that did.
        pool = o.to_master + [float("inf")] * missing
        p95 = percentile(pool, 95)
        out.append(
            f"Acknowledgement to master (sample of {o.tracked} instances no reader touched): median "
            f"{seconds(percentile(pool, 50))}, p95 {seconds(p95)}, max {fmt(max(o.to_master), 1)} s "
            f"among those that got one; {missing} without a master at the end"
        )
    else:
        out.append(f"Acknowledgement to master: none of the {o.tracked} sampled instances got a master")
    for name, k in sorted(o.kinds.items()):
        out += [f"  {name}: {body} (x{n})" for body, n in k.bodies.most_common(3)]
    out.append(
        "Backlog cleared "
        + (
            f"{o.clear_seconds:.0f} s after the load stopped"
            + (f" ({o.clear_rate:.1f} masters/s)" if o.clear_rate else "")
            if o.clear_seconds is not None
            else "NOT within the cap"
        )
    )
    if o.errors:
        out.append("Exceptions in load threads: " + ", ".join(f"{k} x{n}" for k, n in o.errors.items()))
        out += [f"  {sample.splitlines()[-1]}" for sample in o.error_samples]
    else:
        out.append("Exceptions in load threads: none")
    out.append(f"Server log: {len(o.log_lines)} warning/error line(s)")
    out += [f"  {line[:300]}" for line in o.log_lines[:8]]
    return out


def targets(outcomes: list[Outcome]) -> list[str]:
    rows = []
    for o in outcomes:
        cut = cut_kind(o)
        if o.share <= 0.75:
            rows.append([f"{o.share:.0%}", "backlog stays bounded (last half of the load)", yes(bounded(o))])
            rows.append(
                [
                    f"{o.share:.0%}",
                    f"every cut request 200 within {CUT_DEADLINE:g} s",
                    yes(cut.n > 0 and cut.fast_ok == cut.n),
                ]
            )
        else:
            rows.append([f"{o.share:.0%}", "no 503 on cuts", yes(cut.n > 0 and cut.s503 == 0)])
    return markdown_table(["rate", "target", "met"], rows, "llc")


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


def summary(outcomes: list[Outcome]) -> list[str]:
    rows = []
    for o in outcomes:
        cut = cut_kind(o)
        pool = o.to_master + [float("inf")] * (o.tracked - len(o.to_master))
        med = percentile(pool, 50) if pool else None
        p95 = percentile(pool, 95) if pool else None
        peak = max((s["pending_masters"] for s in o.samples), default=0)
        rows.append(
            [
                f"{o.share:.0%} ({o.achieved:.0f}/s)",
                str(peak),
                f"{cut.fast_ok / cut.n:.1%}" if cut.n else "-",
                str(cut.s503),
                str(sum(cut.other.values()) + cut.failed),
                (
                    f"{fmt(statistics.median(cut.ms) if cut.ms else None, 0)} / "
                    f"{fmt(percentile(cut.ms, 95) if cut.ms else None, 0)}"
                ),
                (
                    f"{fmt(med, 1) if med != float('inf') else '∞'} / "
                    f"{fmt(p95, 1) if p95 != float('inf') else '∞'}"
                ),
                fmt(o.clear_seconds, 0) if o.clear_seconds is not None else "> cap",
            ]
        )
    return markdown_table(
        [
            "STOW rate (achieved)",
            "peak backlog",
            "cuts 200 within 1 s",
            "cut 503",
            "cut other errors",
            "cut median / p95 ms",
            "ack→master median / p95 s",
            "clear after (s)",
        ],
        rows,
        "lrrrrrrr",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 minute per rate, 5-10-slice series")
    p.add_argument("--minutes", type=float, default=None, help="load per rate (default 4; --quick 1)")
    p.add_argument("--rates", default="0.5,1.0", help="shares of the maximum ingest rate")
    p.add_argument("--max-rate", type=float, default=None, help="instances/s; skips the calibration")
    p.add_argument("--stow-threads", type=int, default=3)
    p.add_argument("--readers", type=int, default=9, help="reader threads (12 threads in all by default)")
    p.add_argument("--track-every", type=int, default=4, help="every Nth series is the to-master sample")
    p.add_argument("--clear-cap", type=float, default=None, help="seconds (default 600; --quick 90)")
    args = p.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (1.0 if args.quick else 4.0)
    args.clear_cap = args.clear_cap if args.clear_cap is not None else (90.0 if args.quick else 600.0)
    args.sizes = (5, 10) if args.quick else (5, 20)
    shares = [float(x) for x in args.rates.split(",") if x.strip()]

    started = time.monotonic()
    log(
        f"sustained_bench: {' '.join(sys.argv[1:]) or '(defaults)'}; {load_line()}; "
        f"DICOMWEB_MASTER_WAIT_MS={os.environ.get('DICOMWEB_MASTER_WAIT_MS', '1000 (default)')}"
    )
    maker = SeriesMaker(args.sizes[1])
    max_rate = args.max_rate or calibrate(maker, args.sizes, 6.0 if args.quick else 10.0)
    outcomes = []
    for share in shares:
        o = one_rate(maker, share, max_rate, args)
        outcomes.append(o)
        log("\n".join(report(o)))
    log(
        f"\n## Summary (maximum ingest rate {max_rate:.1f} instances/s"
        f"{' given' if args.max_rate else ' calibrated'}; series of {args.sizes[0]}-{args.sizes[1]} slices, "
        f"{args.minutes:g} min per rate)\n"
    )
    log("\n".join(summary(outcomes)))
    log("")
    log("\n".join(targets(outcomes)))
    log(f"\nfinished in {time.monotonic() - started:.0f} s; {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
