"""The servers under test: start our server and the Orthanc peer, and watch what they do on their own
(background work after a load, the bytes they keep on disk)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import orthanc
from bench.processes import cpu_seconds, free_port, log_tail, stop_process, wait_http_ok

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerHandle:
    name: str
    dicomweb_url: str  # e.g. http://127.0.0.1:8042/dicom-web (no trailing slash)
    data_dirs: list[Path]  # everything counted as "bytes on disk"
    log_tail: Callable[[], str] = lambda: ""
    description: str = ""
    pid: int | None = None  # for server CPU accounting (Linux /proc)


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
    port = free_port()
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
                wait_http_ok(f"{base}/healthz", proc, startup_timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- server log ---\n{log_tail(log_path, 25)}") from exc
            yield ServerHandle(
                name="ours",
                dicomweb_url=f"{base}/dicom-web",
                data_dirs=[data],
                log_tail=lambda: log_tail(log_path, 25),
                description=f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} serve, pid {proc.pid}",
                pid=proc.pid,
            )
        finally:
            stop_process(proc)
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


def try_start(
    stack: ExitStack, name: str, starter: Callable[[], AbstractContextManager[ServerHandle]]
) -> ServerHandle | None:
    """Enter a server's context on ``stack``; None (with a clear message) if it cannot start."""
    try:
        server = stack.enter_context(starter())
    except RuntimeError as exc:
        print(f"[{name}] could not start, skipping {name}: {exc}", flush=True)
        return None
    print(f"[{name}] up: {server.description}", flush=True)
    return server


def start_peer(stack: ExitStack) -> ServerHandle | None:
    """Orthanc on ``stack``; None, with the reason printed, if it is not installed or does not start."""
    ok, why = orthanc.available()
    if not ok:
        print(f"Orthanc not installed: skipping peer ({why})", flush=True)
        return None
    return try_start(stack, "orthanc", start_orthanc)


def dir_bytes(paths: Sequence[Path]) -> int:
    """Sum of regular file sizes (apparent size) under ``paths``."""
    total = 0
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                with contextlib.suppress(OSError):  # a temp file vanished while walking
                    total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def wait_idle(
    server: ServerHandle, timeout: float = 1800.0, window: float = 1.0, threshold: float = 0.05
) -> tuple[float, float]:
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


def wait_disk_stable(
    servers: Sequence[ServerHandle], quiet: float, timeout: float = 600.0, poll: float = 5.0
) -> dict[str, int]:
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
