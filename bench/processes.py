"""Server processes seen from outside: a free port, waiting for the first answer, stopping, the log's
tail, and the CPU time a process tree has used."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A port that was free a moment ago (small race, fine for local benches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail fast (RuntimeError) if the process died, TimeoutError after
    ``timeout`` seconds. Either message ends with the tail of ``log``, when given."""
    tail = (lambda: f"\n{log_tail(log, 20)}") if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} answered{tail()}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last}){tail()}")


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM (lets a server shut down cleanly, Orthanc close its SQLite index), then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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
