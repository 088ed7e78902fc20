"""A server killed outright (SIGKILL, the OOM killer) leaves none of its processes behind: its parser
workers, the forkserver that started them and the resource tracker end with it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

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
