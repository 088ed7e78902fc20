"""The server's processes and temporary folders: a server killed outright (SIGKILL, the OOM killer) leaves
none of its processes behind (its parser workers, the forkserver that started them and the resource
tracker end with it), and a server starting clears only the temporary folders of processes that ended."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from storage.processes import tmp_folder_name
from tests.conftest import PYDICOM_TEST_FILES, Server, new_uids, stow


def group_members(pgid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.add(int(entry.name))
            except ProcessLookupError:
                continue
    return members


def test_killed_server_leaves_no_parser_processes(tmp_path: Path) -> None:
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to list the server's processes")
    srv = Server(tmp_path / "data")
    try:
        with httpx.Client(base_url=srv.root, timeout=60) as client:  # the parsers have parsed something
            data = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
            assert stow(client, [data]).status_code == 200
        helpers = group_members(srv.proc.pid) - {srv.proc.pid}
        assert len(helpers) >= 2, "expected parser processes and a forkserver beside the server"
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        deadline = time.time() + 20
        while (left := group_members(srv.proc.pid)) and time.time() < deadline:
            time.sleep(0.1)
        assert not left, f"{len(left)} process(es) outlived the killed server"
    finally:
        srv.stop()


def test_starting_server_clears_only_what_dead_processes_left(tmp_path: Path) -> None:
    """A server starting on a data folder another server or command is using (an import, a second server)
    must not delete that process's uploads in progress; what crashed processes left is removed."""
    tmp_root = tmp_path / "data" / "tmp"
    running = tmp_root / tmp_folder_name(os.getpid())  # this test's process stands for a running command
    running.mkdir(parents=True)
    (running / "upload-in-progress.dcm").write_bytes(b"part")
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = tmp_root / tmp_folder_name(ended.pid)
    dead.mkdir()
    (dead / "left-by-a-crash.dcm").write_bytes(b"part")
    (tmp_root / "tmpk3j2l1").mkdir()  # an older version's folder
    (tmp_root / "loose.dcm").write_bytes(b"part")
    srv = Server(tmp_path / "data")
    try:
        assert (running / "upload-in-progress.dcm").read_bytes() == b"part"
        left = {p.name for p in tmp_root.iterdir()}
        assert left == {running.name, tmp_folder_name(srv.proc.pid)}
    finally:
        srv.stop()
