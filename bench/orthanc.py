"""Run a throw-away Orthanc (with its DICOMweb plugin) as the reference peer.

Each instance gets its own temp dir holding the JSON config, the storage
area and the SQLite index, so a benchmark run never touches a system-wide
Orthanc and the bytes-on-disk figure covers exactly what it stored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.processes import free_port, log_tail, stop_process, wait_http_ok

ORTHANC_BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


def find_binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_BINARY_CANDIDATES if Path(p).is_file()), None)


def find_plugin() -> str | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if Path(p).exists()), None)


def available() -> tuple[bool, str]:
    """(True, "") if Orthanc and its DICOMweb plugin are installed, else (False, reason)."""
    if find_binary() is None:
        return False, "Orthanc binary not found (apt-get install orthanc)"
    if find_plugin() is None:
        return False, "Orthanc DICOMweb plugin not found (apt-get install orthanc-dicomweb)"
    return True, ""


def version() -> str:
    binary = find_binary()
    if binary is None:
        return "?"
    out = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "?"


def make_config(workdir: Path, http_port: int, dicom_port: int, plugin: str) -> dict:
    return {
        "Name": "dicomweb-bench-orthanc",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # Store files as received, like a plain archive; the comparison of
        # bytes on disk is then against raw DICOM.
        "StorageCompression": False,
        # Explicit rather than relying on built-in defaults that changed
        # across Orthanc versions: persistent connections like a browser.
        "KeepAlive": True,
        "TcpNoDelay": True,
    }


@dataclass
class OrthancHandle:
    base_url: str  # http://127.0.0.1:PORT
    dicomweb_url: str  # base_url + "/dicom-web"
    workdir: Path
    data_dirs: list[Path]  # what counts as "bytes on disk"
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


@contextmanager
def running(workdir: Path | None = None, startup_timeout: float = 60.0) -> Iterator[OrthancHandle]:
    """Start Orthanc in a fresh temp dir, yield a handle, stop it and clean up.

    If ``workdir`` is given it is used (and kept) instead of a temp dir.
    """
    ok, reason = available()
    if not ok:
        raise RuntimeError(reason)
    binary, plugin = find_binary(), find_plugin()
    assert binary and plugin
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-")) if own_dir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(make_config(work, http_port, dicom_port, plugin), indent=2))
    log_path = work / "orthanc.log"
    base = f"http://127.0.0.1:{http_port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=work)
        handle = OrthancHandle(
            base_url=base,
            dicomweb_url=f"{base}/dicom-web",
            workdir=work,
            data_dirs=[work / "storage", work / "index"],
            process=process,
            log_path=log_path,
        )
        try:
            try:
                wait_http_ok(f"{base}/system", process, startup_timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"Orthanc did not start: {exc}\n{handle.log_tail()}") from exc
            yield handle
        finally:
            stop_process(process)
            if own_dir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # Smoke test: python -m bench.orthanc
    ok, why = available()
    if not ok:
        print(f"Orthanc not available: {why}")
        raise SystemExit(1)
    print(version())
    with running() as h:
        print("Orthanc up at", h.base_url, httpx.get(f"{h.base_url}/system").json().get("Version"))
        plugins = httpx.get(f"{h.base_url}/plugins").json()
        print("plugins:", plugins)
