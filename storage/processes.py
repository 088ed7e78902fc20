"""Processes: whether one is alive, and worker processes that end with the server that started them.

A ProcessPoolExecutor's workers wait on a pipe whose writing end they hold themselves, and a forkserver
waits on a pipe its children hold: when the server is killed (SIGKILL, the OOM killer), nothing tells them,
and each dead server would leave its parsers and forkserver behind for ever. Each worker therefore
watches the server's process and exits when it is gone; the forkserver and the resource tracker then see
their pipes close and end too.

Each process also keeps its temporary files in a folder named after its host and PID (Settings.tmp_dir),
so a server starting on a data folder removes only what processes that ended left there.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from pathlib import Path

POLL_SECONDS = 1.0  # where a process cannot be watched through a pidfd
# A temporary folder of another host sharing the data folder is removed once untouched for this long.
OTHER_HOST_TMP_SECONDS = 24 * 3600.0


def exit_with(pid: int) -> None:
    """In a worker process: exit at once when process `pid` (the server) ends."""
    threading.Thread(target=_watch, args=(pid,), name=f"exit-with-{pid}", daemon=True).start()


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has ended, whatever reuses its PID
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(0)
    while alive(pid):
        time.sleep(POLL_SECONDS)
    os._exit(0)


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def tmp_folder_name(pid: int) -> str:
    """The temporary folder of process `pid` on this host (under Settings.tmp_root)."""
    return f"{socket.gethostname()[:32]}-{pid}"


def left_by_dead_processes(root: Path) -> list[Path]:
    """What under `root` no running process owns: the folders of processes on this host that ended, those of
    other hosts untouched for a day, and anything else (loose files of older versions)."""
    host = socket.gethostname()[:32]
    stale = []
    for entry in root.iterdir() if root.is_dir() else []:
        owner, _, pid = entry.name.rpartition("-")
        if not (entry.is_dir() and pid.isdigit()):
            stale.append(entry)
        elif owner == host:
            if not alive(int(pid)):
                stale.append(entry)
        elif time.time() - entry.stat().st_mtime > OTHER_HOST_TMP_SECONDS:
            stale.append(entry)
    return stale
