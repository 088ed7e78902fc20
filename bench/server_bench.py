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

The helpers (server start-up, STOW loading, multipart parsing, timing) are
meant to be reused by other benchmarks, e.g. progressive retrieval.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench import orthanc
from bench.corpus import (
    FULL_CT_SLICES,
    FULL_SMALL_STUDIES,
    QUICK_CT_SLICES,
    QUICK_SMALL_STUDIES,
    Corpus,
    build_corpus,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

STOW_CONCURRENCY = 4
STOW_MAX_INSTANCES = 16
STOW_MAX_BYTES = 8 << 20
FRAME_CONCURRENCY = 6  # what a browser opens per origin (HTTP/1.1)

DICOM_JSON = "application/dicom+json"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAME_NATIVE_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
# OHIF's study list query (StudyListWithFilters), verbatim.
STUDY_LIST_INCLUDE = "00081030,00080060,00080090,00100030"
NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
LOSSLESS_TS = {
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.5",
}


# --------------------------------------------------------------------------
# Servers


@dataclass
class ServerHandle:
    name: str
    dicomweb_url: str  # e.g. http://127.0.0.1:8042/dicom-web (no trailing slash)
    data_dirs: list[Path]  # everything counted as "bytes on disk"
    log_tail: Callable[[], str] = lambda: ""
    description: str = ""
    pid: int | None = None  # for server CPU accounting (Linux /proc)


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of ``pid`` and its live descendants (0 if unknown).

    Wall-clock figures on a small shared box mix in the client and other
    jobs; server CPU per request is the steadier figure to compare.
    """
    if pid is None or not Path("/proc").is_dir():
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, cpu seconds)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, total = {pid}, 0.0
    # Parents have lower pids almost always; loop until no new descendant.
    changed = True
    while changed:
        changed = False
        for p, (ppid, _) in stats.items():
            if ppid in wanted and p not in wanted:
                wanted.add(p)
                changed = True
    for p in wanted:
        total += stats.get(p, (0, 0.0))[1]
    return total


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ours_command(host: str, port: int, data: Path) -> list[str] | None:
    """How to launch our server, or None if the package is not there yet."""
    args = ["serve", "--host", host, "--port", str(port), "--data", str(data)]
    sys.path.insert(0, str(REPO_ROOT))
    try:
        has_main = importlib.util.find_spec("dicomweb.__main__") is not None
    except ImportError:
        has_main = False
    finally:
        sys.path.remove(str(REPO_ROOT))
    if has_main:
        return [sys.executable, "-m", "dicomweb", *args]
    script = shutil.which("dicomweb")
    return [script, *args] if script else None


@contextmanager
def start_ours(data_dir: Path | None = None, startup_timeout: float = 60.0) -> Iterator[ServerHandle]:
    """Run ``python -m dicomweb serve`` on a free port with a fresh data dir.

    Raises RuntimeError (with the server's log tail) if it cannot start.
    """
    own_dir = data_dir is None
    work = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    data = Path(data_dir) if data_dir else work / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = orthanc.free_port()
    cmd = ours_command("127.0.0.1", port, data)
    if cmd is None:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError("no dicomweb/__main__.py and no `dicomweb` console script")
    env = dict(os.environ)
    # Run the tree being developed, even if an older copy is pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log_path = work / "server.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            try:
                orthanc.wait_http_ok(f"{base}/healthz", proc, startup_timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- server log ---\n{_tail(log_path)}") from exc
            yield ServerHandle(
                name="ours",
                dicomweb_url=f"{base}/dicom-web",
                data_dirs=[data],
                log_tail=lambda: _tail(log_path),
                description=f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} serve, pid {proc.pid}",
                pid=proc.pid,
            )
        finally:
            orthanc.stop_process(proc)
            if own_dir:
                shutil.rmtree(work, ignore_errors=True)


@contextmanager
def start_orthanc() -> Iterator[ServerHandle]:
    with orthanc.running() as h:
        plugin = httpx.get(f"{h.base_url}/plugins/dicom-web").json().get("Version", "?")
        yield ServerHandle(
            name="orthanc",
            dicomweb_url=h.dicomweb_url,
            data_dirs=h.data_dirs,
            log_tail=h.log_tail,
            description=f"{orthanc.version()} + DICOMweb plugin {plugin}",
            pid=h.process.pid,
        )


class Response:
    """The parts of an HTTP answer the checks need (httpx-like names)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.content)


# What a failed request raises (connection refused/reset, bad status line...).
CLIENT_ERRORS = (OSError, http.client.HTTPException)


class Client:
    """Minimal keep-alive HTTP/1.1 client, one connection per thread and host.

    Not httpx: on this kind of host (few cores shared by client and server)
    httpx's per-request Python overhead capped frame fetching at ~500
    frames/s, below what the servers deliver, so the client and not the
    server was being measured. http.client reads bodies with a single
    recv loop in C and roughly halves that overhead. It sends
    ``Accept-Encoding: identity``, so no server spends time on gzip over
    loopback, and the same client is used for every server.
    """

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conn(self, netloc: str, fresh: bool = False) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(netloc)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conns[netloc] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            conn = self._conn(parts.netloc, fresh=attempt == 1)
            try:
                conn.request(method, target, body=body, headers=headers or {})
                r = conn.getresponse()
                content = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: retry once
                # on a new one (all our requests are safe to replay).
                conn.close()
                if attempt:
                    raise
                continue
            if r.will_close:
                conn.close()
            hdrs: dict[str, str] = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
            return Response(r.status, hdrs, content)
        raise AssertionError("unreachable")

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", url, headers=headers)

    def post(self, url: str, content: bytes, headers: dict[str, str] | None = None) -> Response:
        return self.request("POST", url, body=content, headers=headers)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic GC pauses inside a timed section (they would hit the client,
    not the server); collect before and after instead."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def dir_bytes(paths: Sequence[Path]) -> int:
    """Sum of regular file sizes (apparent size) under ``paths``."""
    total = 0
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass  # a temp file vanished while walking
    return total


def wait_idle(server: ServerHandle, timeout: float = 1800.0, window: float = 1.0,
              threshold: float = 0.05) -> tuple[float, float]:
    """Wait until the server burns < ``threshold`` of a core for two windows in a row.

    A server may answer STOW quickly and do the expensive part (indexing,
    transcoding) in the background; that work must neither be left out of
    its ingest cost nor steal CPU from the next measurement (of itself or of
    the other server). Returns (seconds of background work, CPU seconds).
    """
    if server.pid is None:
        return 0.0, 0.0
    t0 = time.perf_counter()
    start = last = cpu_seconds(server.pid)
    quiet = 0
    while quiet < 2 and time.perf_counter() - t0 < timeout:
        time.sleep(window)
        now = cpu_seconds(server.pid)
        quiet = quiet + 1 if now - last < threshold * window else 0
        last = now
    busy = max(0.0, time.perf_counter() - t0 - quiet * window)
    return busy, last - start


def wait_disk_stable(servers: Sequence[ServerHandle], quiet: float, timeout: float = 600.0,
                     poll: float = 5.0) -> dict[str, int]:
    """Bytes on disk per server once no size changed for ``quiet`` seconds.

    Deferred clean-up (e.g. a received file deleted a grace period after its
    replacement was written) would otherwise be counted or not by chance.
    """
    sizes = {s.name: dir_bytes(s.data_dirs) for s in servers}
    stable_since = t0 = time.monotonic()
    while time.monotonic() - stable_since < quiet and time.monotonic() - t0 < timeout:
        time.sleep(poll)
        now = {s.name: dir_bytes(s.data_dirs) for s in servers}
        if now != sizes:
            sizes, stable_since = now, time.monotonic()
    return sizes


# --------------------------------------------------------------------------
# STOW-RS


@dataclass
class StowBatch:
    body: bytes
    content_type: str
    count: int


def batch_paths(paths: Sequence[Path], max_count: int = STOW_MAX_INSTANCES,
                max_bytes: int = STOW_MAX_BYTES) -> list[list[Path]]:
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


def multipart_body(parts: Sequence[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = "bench-" + hashlib.sha1(b"".join(p[-64:] for p in parts)).hexdigest()
    chunks: list[bytes] = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


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


def _check_stow_answer(resp: Response, expected: int) -> str | None:
    if resp.status_code != 200:
        return f"STOW HTTP {resp.status_code}: {resp.text[:200]!r}"
    try:
        doc = resp.json()
    except ValueError:
        return None  # e.g. an XML answer: status is all we can check
    failed = doc.get("00081198", {}).get("Value", [])
    stored = doc.get("00081199", {}).get("Value", [])
    if failed:
        return f"STOW reported {len(failed)} failed instance(s)"
    if len(stored) != expected:
        return f"STOW acknowledged {len(stored)} of {expected} instances"
    return None


def stow(client: Client, dicomweb_url: str, batches: Sequence[StowBatch],
         concurrency: int = STOW_CONCURRENCY) -> StowResult:
    url = f"{dicomweb_url}/studies"

    def post(b: StowBatch) -> str | None:
        try:
            r = client.post(url, content=b.body, headers={"Content-Type": b.content_type, "Accept": DICOM_JSON})
        except CLIENT_ERRORS as exc:
            return f"STOW {type(exc).__name__}: {exc}"
        return _check_stow_answer(r, b.count)

    with ThreadPoolExecutor(concurrency) as pool, quiet_gc():
        t0 = time.perf_counter()
        answers = list(pool.map(post, batches))
        seconds = time.perf_counter() - t0
    problems = sorted({a for a in answers if a})
    return StowResult(seconds, sum(b.count for b in batches), len(batches), problems)


# --------------------------------------------------------------------------
# Timing and checks


@dataclass
class Measure:
    """One figure for one server; ``problem`` set means the answer was wrong."""

    value: float | None
    problem: str | None = None
    detail: str = ""


Check = Callable[[Response], str | None]


CHECK_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError)


def safe_check(check: Check, r: Response) -> str | None:
    """A malformed answer (e.g. a list of strings where objects belong) must
    be reported as wrong, not crash the whole benchmark."""
    try:
        return check(r)
    except CHECK_ERRORS as exc:
        return f"malformed answer ({type(exc).__name__}: {exc})"


def timed_get(client: Client, url: str, headers: dict[str, str]) -> tuple[float, Response]:
    """One GET; (seconds, answer). Raises CLIENT_ERRORS."""
    with quiet_gc():
        t0 = time.perf_counter()
        r = client.get(url, headers=headers)
        return time.perf_counter() - t0, r


def interleave(names: Sequence[str], rounds: int, step: Callable[[str, int], None]) -> None:
    """Call step(name, round) for every server in every round, alternating
    who goes first, so drifting background load (a shared CI box) hits every
    server alike instead of whichever happened to run during the spike."""
    for i in range(rounds):
        for name in names if i % 2 == 0 else list(reversed(names)):
            step(name, i)


def latency(clients: dict[str, Client], urls: dict[str, str], headers: dict[str, str], checks: dict[str, Check],
            runs: int, warmups: int = 2, pids: dict[str, int | None] | None = None) -> dict[str, Measure]:
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


def time_get(client: Client, url: str, headers: dict[str, str], check: Check, runs: int, warmups: int = 2) -> Measure:
    """Single-server form of latency()."""
    return latency({"x": client}, {"x": url}, headers, {"x": check}, runs, warmups)["x"]


def _json_array(r: Response) -> tuple[list | None, str]:
    """The JSON array a 200 answer carries, or None and what is wrong with the answer."""
    if r.status_code != 200:
        return None, f"HTTP {r.status_code}: {r.text[:200]!r}"
    try:
        value = r.json()
    except ValueError:
        return None, "answer is not JSON"
    if not isinstance(value, list):
        return None, "answer is not a JSON array"
    return value, ""


def qido_check(expected: int, name_prefix: str = "") -> Callable[[Response], str | None]:
    def check(r: Response) -> str | None:
        rows, problem = _json_array(r)
        if rows is None:
            return problem
        if len(rows) != expected:
            return f"{len(rows)} studies returned, expected {expected}"
        for row in rows:
            if "0020000D" not in row:
                return "a result lacks StudyInstanceUID"
            if name_prefix:
                names = row.get("00100010", {}).get("Value", [{}])
                alpha = names[0].get("Alphabetic", "") if names and isinstance(names[0], dict) else ""
                if not alpha.upper().startswith(name_prefix.upper()):
                    return f"result PatientName {alpha!r} does not match {name_prefix}*"
                # The small studies all have a StudyDescription: includefield must bring it.
                if "Value" not in row.get("00081030", {}):
                    return "includefield 00081030 (StudyDescription) missing from a result"
        return None

    return check


def metadata_check(sops: Sequence[str]) -> Callable[[Response], str | None]:
    want = set(sops)

    def check(r: Response) -> str | None:
        items, problem = _json_array(r)
        if items is None:
            return problem
        if len(items) != len(want):
            return f"{len(items)} instances, expected {len(want)}"
        got = {it.get("00080018", {}).get("Value", [None])[0] for it in items}
        if got != want:
            return f"SOPInstanceUIDs differ from the series ({len(got & want)} of {len(want)} match)"
        for it in items:
            for tag in ("00280010", "00280011", "00200032", "00200013"):
                if "Value" not in it.get(tag, {}):
                    return f"an instance lacks {tag}"
        return None

    return check


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    head, *rest = value.split(";")
    params = {}
    for item in rest:
        if "=" in item:
            k, v = item.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return head.strip().lower(), params


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, payload) parts."""
    mime, params = content_type_params(content_type)
    if not mime.startswith("multipart/") or "boundary" not in params:
        raise ValueError(f"not a multipart answer: {content_type!r}")
    delim = b"--" + params["boundary"].encode()
    parts = []
    # Anything before the first delimiter is preamble; after "--" epilogue.
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without header separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


def _sign_extend(a: np.ndarray, bits: int) -> np.ndarray:
    a = a.astype(np.int32) & ((1 << bits) - 1)
    return ((a ^ (1 << (bits - 1))) - (1 << (bits - 1))).astype(np.int16)


def decode_frame(ts: str, payload: bytes) -> np.ndarray | None:
    """Decode a compressed frame if imagecodecs can; None if unsupported."""
    try:
        import imagecodecs
    except ImportError:
        return None
    decoders = {
        "1.2.840.10008.1.2.4.57": "ljpeg_decode", "1.2.840.10008.1.2.4.70": "ljpeg_decode",
        "1.2.840.10008.1.2.4.80": "jpegls_decode", "1.2.840.10008.1.2.4.81": "jpegls_decode",
        "1.2.840.10008.1.2.4.90": "jpeg2k_decode", "1.2.840.10008.1.2.4.91": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.201": "jpeg2k_decode", "1.2.840.10008.1.2.4.202": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.203": "jpeg2k_decode",
    }
    fn = getattr(imagecodecs, decoders.get(ts, ""), None)
    if fn is None:
        return None
    try:
        return np.asarray(fn(payload))
    except (RuntimeError, ValueError):  # codec errors: the frame is broken, report it
        return np.empty(0)


JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_TS = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
          "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


@dataclass
class FrameVerdict:
    problem: str | None  # wrong answer: disqualifies the figure
    syntax: str  # transfer syntax seen (for the report)
    warnings: list[str] = field(default_factory=list)  # protocol nits, pixels still right


def check_frame(corpus: Corpus, index: int, r: Response, bits_stored: int = 14) -> FrameVerdict:
    """Check one frame answer against the source pixels.

    The corpus is lossless, so every answer must reproduce the source pixels
    exactly (native bytes, or the decoded codestream); syntaxes we cannot
    decode are only size-checked and reported as "not verified". Deviations
    from the requested media type are warnings: the pixels are still right.
    """
    if r.status_code != 200:
        return FrameVerdict(f"HTTP {r.status_code}", "?")
    try:
        parts = parse_multipart(r.headers.get("content-type", ""), r.content)
    except ValueError as exc:
        return FrameVerdict(str(exc), "?")
    if len(parts) != 1 or not parts[0][1]:
        return FrameVerdict(f"{len(parts)} parts / empty frame", "?")
    headers, payload = parts[0]
    mime, params = content_type_params(headers.get("content-type", ""))
    ts = params.get("transfer-syntax", "")
    warnings = []
    if mime != "application/octet-stream":
        warnings.append(f"part Content-Type {mime or 'missing'!r} although the Accept asked for "
                        'type="application/octet-stream"')
    if ts in J2K_TS and payload.startswith(JP2_SIGNATURE):
        warnings.append(f"JP2 file (boxes) sent as {ts}; DICOM encapsulates a bare J2K codestream")
    expected_hash = corpus.ct_frame_sha256[index]
    if ts in NATIVE_TS or (not ts and len(payload) == corpus.ct_frame_bytes()):
        if hashlib.sha256(payload).hexdigest() != expected_hash:
            return FrameVerdict("native frame differs from the stored pixels", ts or "native?", warnings)
        return FrameVerdict(None, ts or "native?", warnings)
    arr = decode_frame(ts, payload)
    if arr is None:
        return FrameVerdict(None, f"{ts or mime or 'unknown'} (not verified)", warnings)
    if arr.size != corpus.ct_rows * corpus.ct_columns:
        return FrameVerdict(
            f"frame ({ts}) decodes to {arr.shape}, expected {corpus.ct_rows}x{corpus.ct_columns}", ts, warnings)
    # Decoders differ in how they hand back signed 14-bit data (int16, or
    # uint16 in two's complement of BitsStored): accept either.
    candidates = [_sign_extend(arr, bits_stored)]
    if arr.dtype.itemsize == 2:
        candidates.append(arr)
    if any(hashlib.sha256(c.astype("<i2").tobytes()).hexdigest() == expected_hash for c in candidates):
        return FrameVerdict(None, ts, warnings)
    if ts in LOSSLESS_TS:
        return FrameVerdict(f"lossless frame ({ts}) differs from the stored pixels", ts, warnings)
    # transfer-syntax=* lets the server pick the syntax, but silently lossy
    # pixels for a lossless original are not an answer a viewer can use.
    return FrameVerdict(f"lossy frame ({ts}) for a lossless original", ts, warnings)


def frame_urls(dicomweb_url: str, corpus: Corpus) -> list[str]:
    base = f"{dicomweb_url}/studies/{corpus.ct_study_uid}/series/{corpus.ct_series_uid}/instances"
    return [f"{base}/{sop}/frames/1" for sop in corpus.ct_sop_uids]


def fetch_all(client: Client, urls: Sequence[str], headers: dict[str, str],
              concurrency: int = FRAME_CONCURRENCY) -> tuple[float, list[Response | Exception]]:
    """GET every URL with ``concurrency`` in flight; (wall seconds, answers)."""

    def get(url: str) -> Response | Exception:
        try:
            return client.get(url, headers=headers)
        except CLIENT_ERRORS as exc:
            return exc

    with ThreadPoolExecutor(concurrency) as pool, quiet_gc():
        t0 = time.perf_counter()
        answers = list(pool.map(get, urls))
        return time.perf_counter() - t0, answers


@dataclass
class FramesVerdict:
    problem: str | None
    seen: str  # "syntax xN, ..."
    warnings: str  # "" or "warning xN; ..."
    payload_bytes: int = 0


def _counted(counts: dict[str, int], sep: str = "; ") -> str:
    return sep.join(f"{v} frame(s): {k}" for k, v in counts.items())


def check_frames(corpus: Corpus, answers: Sequence[Response | Exception]) -> FramesVerdict:
    problems: dict[str, int] = {}
    warnings: dict[str, int] = {}
    syntaxes: dict[str, int] = {}
    size = 0
    for i, a in enumerate(answers):
        if isinstance(a, Exception):
            v = FrameVerdict(f"{type(a).__name__}: {a}", "?")
        else:
            size += len(a.content)
            try:
                v = check_frame(corpus, i, a)
            except CHECK_ERRORS as exc:
                v = FrameVerdict(f"malformed answer ({type(exc).__name__}: {exc})", "?")
        syntaxes[v.syntax] = syntaxes.get(v.syntax, 0) + 1
        if v.problem:
            problems[v.problem] = problems.get(v.problem, 0) + 1
        for w in v.warnings:
            warnings[w] = warnings.get(w, 0) + 1
    seen = ", ".join(f"{k or '?'} x{v}" for k, v in syntaxes.items())
    return FramesVerdict(_counted(problems) or None, seen, _counted(warnings), size)


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


def study_list_url(dicomweb_url: str, patient_name: str) -> str:
    """OHIF's study list query, verbatim apart from the PatientName filter."""
    return (f"{dicomweb_url}/studies?PatientName={patient_name}&limit=101&offset=0&fuzzymatching=false"
            f"&includefield={STUDY_LIST_INCLUDE}")


def series_metadata_url(dicomweb_url: str, corpus: Corpus) -> str:
    return f"{dicomweb_url}/studies/{corpus.ct_study_uid}/series/{corpus.ct_series_uid}/metadata"


@dataclass
class LoadResult:
    stow: Measure  # instances/s over the summed request wall time
    ingest: Measure  # the same including the background work each slice triggered
    background_seconds: float  # that background work, waited for before the next slice


def load(servers: Sequence[ServerHandle], clients: dict[str, Client], batches: Sequence[StowBatch],
         chunks: int = 4, log: Callable[[str], None] = print) -> dict[str, LoadResult]:
    """STOW the whole corpus into every server.

    The batches are sent in ``chunks`` contiguous slices, alternating between
    servers (A B, B A, ...), so a burst of background load does not land on a
    single server's whole load.
    """
    n = max(1, min(chunks, len(batches)))
    bounds = [round(i * len(batches) / n) for i in range(n + 1)]
    slices = [batches[bounds[i]:bounds[i + 1]] for i in range(n)]
    total = {s.name: StowResult(0.0, 0, 0) for s in servers}
    urls = {s.name: s.dicomweb_url for s in servers}
    log(f"STOW {sum(b.count for b in batches)} instances in {len(batches)} requests into "
        f"{', '.join(urls)} ({n} alternating slices) ...")

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
        per_instance = f"; server CPU ≈ {cpu[name] / t.instances * 1000:.1f} ms/instance" if t.instances else ""
        problem = "; ".join(t.problems) or None
        stow_m = Measure(t.per_second, problem,
                         f"{t.instances} instances, {t.requests} requests, {t.seconds:.2f} s" + per_instance)
        busy, busy_cpu = background[name]
        until_idle = t.seconds + busy
        ingest_m = Measure(t.instances / until_idle if until_idle else None, problem,
                           f"{t.seconds:.2f} s STOW + {busy:.1f} s / {busy_cpu:.1f} CPU-s of background work")
        out[name] = LoadResult(stow_m, ingest_m, busy)
        log(f"[{name}]   {t.per_second:.1f} instances/s ({t.seconds:.2f} s), then {busy:.1f} s of background "
            f"work {problem or ''}")
    return out


def frames_first_and_passes(clients: dict[str, Client], servers: dict[str, ServerHandle], corpus: Corpus,
                            passes: int) -> tuple[dict[str, Measure], dict[str, Measure]]:
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
        detail = (f"{secs:.2f} s; transfer syntaxes: {seen[name]}; "
                  f"{verdict.payload_bytes / len(answers) / 1e3:.0f} kB/frame on the wire")
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


def frames_native(clients: dict[str, Client], servers: dict[str, ServerHandle], corpus: Corpus) -> dict[str, Measure]:
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


def run_suite(servers: Sequence[ServerHandle], corpus: Corpus, batches: Sequence[StowBatch], cfg: Settings,
              log: Callable[[str], None] = print) -> dict[str, Results]:
    """Load the corpus into every server, then measure them; every step
    alternates between the servers (see interleave())."""
    by_name = {s.name: s for s in servers}
    pids = {s.name: s.pid for s in servers}
    res = {s.name: Results(s.name, s.description) for s in servers}
    clients = {s.name: Client() for s in servers}
    try:
        for name, loaded in load(servers, clients, batches, log=log).items():
            res[name].stow_ips, res[name].ingest_ips = loaded.stow, loaded.ingest
        disk_after_load = {s.name: dir_bytes(s.data_dirs) for s in servers}

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
        for n, m in latency(clients, urls, json_accept, checks, cfg.metadata_runs, pids=pids).items():
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
            res[n].disk_bytes = Measure(settled[n], None, f"{disk_after_load[n] / 1e6:.1f} MB right after load, "
                                        f"{settled[n] / 1e6:.1f} MB once stable")
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
        Row(f"QIDO study list `PatientName={cfg.name_prefix}*` (median ms)", "qido_prefix_ms", "ms", False, 1.0),
        Row(f"Series metadata, {n} instances (median ms)", "metadata_ms", "ms", False, 5.0),
        Row(f"Frames, {n} x 1 request, {FRAME_CONCURRENCY} concurrent (frames/s)", "frames_fps", "fps", True, 1.0,
            "{:.0f}"),
        Row("Frames, first pass after load (frames/s)", "frames_first_fps", "fps", True, None, "{:.0f}"),
        Row("Frames, `transfer-syntax=1.2.840.10008.1.2.1` requested, 1 pass (frames/s)", "frames_native_fps", "fps",
            True, None, "{:.0f}"),
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
    lines = [
        "| Metric | Ours | Orthanc | Ours vs Orthanc (×, > 1 = ours better) | Target | Met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        om = getattr(ours, row.attr) if ours else None
        pm = getattr(peer, row.attr) if peer else None
        r = ratio(om, pm, row.higher_is_better)
        target = f"≥ {row.target:g}×" if row.target else "info"
        if r is None:
            wrong = (om and om.problem) or (pm and pm.problem)
            rtxt, met = ("wrong answer" if wrong else "—"), ("no" if om and om.problem else "—")
        else:
            rtxt = f"{r:.2f}"
            met = "—" if row.target is None else ("yes" if r >= row.target else "no")
        lines.append(f"| {row.label} | {_cell(om, row)} | {_cell(pm, row)} | {rtxt} | {target} | {met} |")
    return "\n".join(lines)


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


def try_start(stack: ExitStack, name: str, starter: Callable[[], AbstractContextManager[ServerHandle]]
              ) -> ServerHandle | None:
    """Enter a server's context on ``stack``; None (with a clear message) if it cannot start."""
    try:
        server = stack.enter_context(starter())
    except RuntimeError as exc:
        print(f"[{name}] could not start, skipping {name}: {exc}", flush=True)
        return None
    print(f"[{name}] up: {server.description}", flush=True)
    return server


def format_header(corpus: Corpus, cfg: Settings, quick: bool, load: tuple[float, float]) -> str:
    return "\n".join([
        f"### DICOMweb server benchmark ({'quick' if quick else 'full'} corpus)",
        "",
        (f"Corpus: {len(corpus.files)} instances / {corpus.study_count} studies "
         f"({corpus.total_bytes() / 1e6:.0f} MB): a {len(corpus.ct_sop_uids)}-slice CT series "
         f"({corpus.ct_rows}x{corpus.ct_columns}, 16-bit), WG04 CR/MR/US, {corpus.small_studies} small CT studies. "
         f"Client: Python http.client, keep-alive, no gzip. STOW: {STOW_CONCURRENCY} concurrent requests of "
         f"≤ {STOW_MAX_INSTANCES} instances / {STOW_MAX_BYTES >> 20} MiB. Queries: sequential, median of "
         f"{cfg.query_runs} (metadata {cfg.metadata_runs}) after 2 warm-ups. Frames: {FRAME_CONCURRENCY} concurrent, "
         f"median of {cfg.frame_passes} passes. Load, queries and frame passes alternate between the servers. "
         f"Host: {platform.machine()}, {os.cpu_count()} CPUs shared by client and servers, load average "
         f"{load[0]:.1f} before / {load[1]:.1f} after; Python {platform.python_version()}."),
        "",
        ("Ratios are oriented so that **> 1 means our server is better** (faster, or smaller on disk). "
         "✗ marks a wrong answer, which never counts as a win."),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_CT_SLICES} CT slices, {QUICK_SMALL_STUDIES} small studies")
    p.add_argument("--only", choices=("ours", "orthanc"), help="benchmark a single server")
    p.add_argument("--cache", type=Path, default=None, help="corpus cache dir (default ~/.cache/dicomweb-bench)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)

    slices, small = (QUICK_CT_SLICES, QUICK_SMALL_STUDIES) if args.quick else (FULL_CT_SLICES, FULL_SMALL_STUDIES)
    cfg = Settings(query_runs=10, metadata_runs=5, frame_passes=2) if args.quick else Settings()
    corpus = build_corpus(slices, small, cache=args.cache)
    batches = prepare_stow(corpus.paths())
    print(f"corpus: {corpus.root} — {len(corpus.files)} instances, {corpus.study_count} studies, "
          f"{corpus.total_bytes() / 1e6:.1f} MB; CT series of {len(corpus.ct_sop_uids)} slices "
          f"{corpus.ct_rows}x{corpus.ct_columns}", flush=True)

    started: list[ServerHandle | None] = []
    load_before = os.getloadavg()[0]
    with ExitStack() as stack:
        if args.only in (None, "ours"):
            started.append(try_start(stack, "ours", start_ours))
        if args.only in (None, "orthanc"):
            ok, why = orthanc.available()
            if ok:
                started.append(try_start(stack, "orthanc", start_orthanc))
            else:
                print(f"Orthanc not installed: skipping peer ({why})", flush=True)
        servers = [s for s in started if s]
        results = run_suite(servers, corpus, batches, cfg, log=lambda m: print(m, flush=True)) if servers else {}
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
        args.json.write_text(json.dumps({"ours": asdict(ours) if ours else None,
                                         "orthanc": asdict(peer) if peer else None}, indent=1, default=str))
    wrong = [r for r in (ours, peer) if r and r.problems()]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
