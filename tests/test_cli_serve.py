"""`dicomweb serve` as an operator meets it: the start-up banner, the access log (no query strings, so no
patient names or tokens), and one-line refusals when it cannot work. A real server on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.test_cli import BROKEN_CODECS, assert_one_line_error, run


@contextmanager
def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, Path]]:
    """(base URL, file holding the server's stdout and stderr) of a server stopped on leaving."""
    port = free_port()
    output = tmp_path / f"serve-{port}.log"
    with open(output, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomweb",
                "serve",
                "--port",
                str(port),
                "--data",
                str(tmp_path / "data"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert proc.poll() is None, output.read_text()
            yield base, output
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_banner_and_access_log_without_query_strings(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, output):
        port = base.rsplit(":", 1)[1]
        assert httpx.get(f"{base}/dicom-web/studies", params={"PatientName": "DOE*"}).status_code == 200
        # Tokens in query strings come later (viewers' range requests carry no Authorization header).
        token = httpx.get(f"{base}/dicom-web/series", params={"access_token": "s3cr3t-t0ken"}).status_code
        assert httpx.get(f"{base}/nope%0Afake-line").status_code == 404
    text = output.read_text()
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for name, value in [
        ("DICOMweb root", f"http://127.0.0.1:{port}/dicom-web"),
        ("viewer demo", f"http://127.0.0.1:{port}/viewer-demo/"),
        ("OHIF", f"http://127.0.0.1:{port}/ohif/"),
        ("OHIF one stage", f"http://127.0.0.1:{port}/ohif-single/"),
        ("OHIF progressive", f"http://127.0.0.1:{port}/ohif-progressive/"),
        ("health", f"http://127.0.0.1:{port}/healthz"),
        ("status", f"http://127.0.0.1:{port}/dicom-web/status"),
        ("data folder", str((tmp_path / "data").resolve())),
        ("index", f"SQLite {(tmp_path / 'data' / 'index.sqlite').resolve()}"),
    ]:
        assert f"{name} {value}" in lines, (name, text)
    assert any(line.startswith("codecs OpenJPEG 2.5") for line in lines), text
    assert "access log on (method, path without query string, status, bytes, time, client)" in lines

    access = [line for line in lines if " dicomweb.access: " in line]
    studies = [line for line in access if " GET /dicom-web/studies 200 " in line]
    assert len(studies) == 1 and studies[0].endswith(" ms"), access
    assert " 127.0.0.1:" in studies[0]
    assert any(f" GET /dicom-web/series {token} " in line for line in access), access
    # No query string, so neither the patient name nor the token, anywhere in the output.
    for secret in ("PatientName", "DOE", "access_token", "s3cr3t"):
        assert secret not in text, secret
    # A percent-encoded newline in the path cannot start a fake log line.
    assert any(" GET /nope\\nfake-line 404 " in line for line in access), access
    assert not any(line.startswith("fake-line") for line in lines)
    assert '"GET /' not in text  # uvicorn's own access log (request line with query) is off


def test_access_log_off_and_another_root(tmp_path: Path) -> None:
    with serving(tmp_path, "--root", "pacs", env={"DICOMWEB_ACCESS_LOG": "0"}) as (base, output):
        assert httpx.get(f"{base}/pacs/studies").status_code == 200
        assert httpx.get(f"{base}/pacs/status").status_code == 200
    lines = [" ".join(line.split()) for line in output.read_text().splitlines()]
    assert f"DICOMweb root {base}/pacs" in lines and f"status {base}/pacs/status" in lines
    assert "access log off" in lines
    assert not any("dicomweb.access" in line for line in lines)


def test_broken_codec_stack_refuses_to_start(tmp_path: Path) -> None:
    done = run(
        "serve", "--port", str(free_port()), "--data", str(tmp_path / "data"), env=BROKEN_CODECS, timeout=60
    )
    assert_one_line_error(done, 1, "cannot make layered JPEG 2000 masters", "DICOMWEB_OPENJPEG")
    assert "Started server process" not in done.stdout + done.stderr


def test_unreachable_database_refuses_to_start_without_saying_its_password(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    url = "postgresql+asyncpg://alice:pa55word@127.0.0.1:1/pacs"
    done = run(
        "serve",
        "--port",
        str(free_port()),
        "--data",
        str(tmp_path / "data"),
        "--database-url",
        url,
        timeout=60,
    )
    assert_one_line_error(done, 1, "cannot open the index", "postgresql+asyncpg://alice:***@127.0.0.1:1/pacs")
    assert "pa55word" not in done.stdout + done.stderr
