"""Shared fixtures: the real server started as a subprocess on a free loopback port, and test data."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _data_store() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("data_store")  # the pydicom-data package
    assert spec and spec.origin, "pip install pydicom-data"
    return Path(spec.origin).parent / "data"


PYDICOM_DATA = _data_store()


@functools.cache
def first_frame(name: str) -> tuple[np.ndarray, int, bool, bool]:
    """(pixels of frame 0, Bits Stored, signed, colour) of a pydicom or pydicom-data test file."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    return pixels, int(ds.BitsStored), bool(ds.PixelRepresentation), ds.SamplesPerPixel == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        *,
        program: list[str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 30,
        args: list[str] | None = None,
        scheme: str = "http",
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.root = f"{self.base}/dicom-web"
        env = {**os.environ, **(extra_env or {})}
        self.log = open(data_dir.parent / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(program or [sys.executable, "-m", "dicomweb"]),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data",
                str(data_dir),
                "--log-level",
                "warning",
                *(args or []),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            # Its own process group: stop() can end the parser processes (forkserver, resource tracker,
            # workers) too, which outlive a server killed with SIGKILL in the crash tests.
            start_new_session=True,
        )
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever the server left behind (after a SIGKILL, its parser processes) goes with its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server") / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, timeout=60) as c:
        yield c


def wait_for_masters(client: httpx.Client, timeout: float = 300) -> None:
    """Until the server's background queue has made every master (GET /status)."""
    deadline = time.time() + timeout
    while client.get("/status").json()["pending_masters"] and time.time() < deadline:
        time.sleep(0.1)
    assert client.get("/status").json()["pending_masters"] == 0, "masters still pending"


def multipart_body(
    files: list[bytes], boundary: str = "test-boundary-1234", ctype: str = "application/dicom"
) -> bytes:
    out = b""
    for data in files:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow(
    client: httpx.Client, files: list[bytes], study: str | None = None, boundary: str = "test-boundary-1234"
):
    url = f"/studies/{study}" if study else "/studies"
    return client.post(
        url,
        content=multipart_body(files, boundary),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related response the way viewers do: boundary from the first line."""
    body = response.content
    first = body.split(b"\r\n", 1)[0]
    assert first.startswith(b"--"), body[:100]
    boundary = first[2:]
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert data.endswith(b"\r\n")
        parts.append((headers, data[:-2]))
    return parts


def new_uids(data: bytes, **changes: str) -> bytes:
    """A copy of a DICOM file with new (or given) UIDs, so tests don't collide."""
    import io

    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID = changes.get("study", generate_uid())
    ds.SeriesInstanceUID = changes.get("series", generate_uid())
    ds.SOPInstanceUID = changes.get("sop", generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        if key not in ("study", "series", "sop"):
            setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---- the scale-out topology (bench/cluster.py): PostgreSQL + S3 server + two replicas behind HAProxy ----


class ClusterServer:
    """The cluster seen as one server by the protocol suites: its address is the load balancer's."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.port = cluster.port
        self.base = cluster.url
        self.root = cluster.root


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster for the whole session (started on first use: the cluster suites only)."""
    import tempfile

    from bench.cluster import Cluster

    # Not under pytest's tmp folder: as root that is private to root, and PostgreSQL runs as postgres.
    c = Cluster(
        base=Path(tempfile.mkdtemp(prefix="dicomweb-cluster-")), env={"DICOMWEB_WORKERS": "1"}
    ).start()
    yield c
    c.stop()
    import shutil

    shutil.rmtree(c.base, ignore_errors=True)
