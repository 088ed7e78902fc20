"""The command line: `dicomweb import` (same ingest path as STOW-RS, masters included) and `verify`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, new_uids


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb", *args], check=False, capture_output=True, text=True, timeout=300
    )


def test_import_then_verify(tmp_path: Path) -> None:
    source = tmp_path / "incoming" / "nested"
    source.mkdir(parents=True)
    study = generate_uid()
    for i in range(3):
        (source / f"ct{i}.dcm").write_bytes(new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study))
    (source / "lossy.dcm").write_bytes(new_uids((PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes()))
    (source / "notes.txt").write_text("not DICOM")
    data = tmp_path / "data"

    done = run("import", "--data", str(data), "--quiet", str(tmp_path / "incoming"))
    assert done.returncode == 1, done.stdout + done.stderr  # one file was refused
    assert "stored 4 of 5 file(s); refused 1" in done.stdout
    assert "not a DICOM file" in done.stdout and "notes.txt" in done.stdout
    assert "kept as received (no lossless master possible): 1" in done.stdout  # the lossy JPEG

    checked = run("verify", "--data", str(data), "--quiet")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "checked 4 instance(s): 3 master(s) decoded bit-exact" in checked.stdout
    assert "0 problem(s)" in checked.stdout

    blob = next(p for p in (data / "blobs").rglob("*.dcm"))
    blob.write_bytes(blob.read_bytes()[:-10] + b"corrupted!")
    broken = run("verify", "--data", str(data), "--quiet")
    assert broken.returncode == 1 and "1 problem(s)" in broken.stdout


def test_import_without_masters_leaves_them_to_the_server(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes()))
    done = run("import", "--data", str(tmp_path / "data"), "--quiet", "--no-masters", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 master(s) left for the server to make" in done.stdout
