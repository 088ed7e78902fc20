"""Worker processes that end with the server that started them.

A ProcessPoolExecutor's workers wait on a pipe whose writing end they hold themselves, and a forkserver
waits on a pipe its children hold: when the server is killed (SIGKILL, the OOM killer), nothing tells them,
and each dead server would leave its parsers and forkserver behind for ever. Each worker therefore
watches the server's process and exits when it is gone; the forkserver and the resource tracker then see
their pipes close and end too.
"""

from __future__ import annotations

import os
import select
import threading
import time

POLL_SECONDS = 1.0  # where a process cannot be watched through a pidfd


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
    while _alive(pid):
        time.sleep(POLL_SECONDS)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
