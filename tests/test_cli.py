"""The command line: help, version and settings errors; `dicomweb import` (same ingest path as STOW-RS,
masters included) with its summary and report; `verify`. Real subprocesses on real files."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, new_uids

# A path no libopenjp2 lives at: glymur cannot load OpenJPEG, as on a broken install.
BROKEN_CODECS = {"DICOMWEB_OPENJPEG": "/nonexistent/libopenjp2.so.7"}


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dicomweb: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


# ---- first contact ---------------------------------------------------------------------------------


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"dicomweb {version('dicomweb-progressive')}"


def test_serve_help_names_every_option_its_variable_and_default() -> None:
    # A malformed environment must not stop --help.
    done = run("serve", "--help", env={"DICOMWEB_PORT": "abc", "DICOMWEB_WORKERS": "many"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for option, variable, default in [
        ("--host", "DICOMWEB_HOST", "default 127.0.0.1"),
        ("--port", "DICOMWEB_PORT", "default 8000"),
        ("--data", "DICOMWEB_DATA", "default ./dicomweb-data"),
        ("--database-url", "DICOMWEB_DATABASE_URL", "default: SQLite in the data folder"),
        ("--root", "DICOMWEB_ROOT", "default /dicom-web"),
        ("--log-level", "DICOMWEB_LOG_LEVEL", "default info"),
        ("--no-access-log", "DICOMWEB_ACCESS_LOG=0", "default on"),
    ]:
        assert option in text and variable in text and default in text, (option, text)
    assert "{critical,error,warning,info,debug,trace}" in text
    assert run("--help", env={"DICOMWEB_PORT": "abc"}).returncode == 0


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DICOMWEB_PORT", "abc"),
        ("DICOMWEB_PORT", "70000"),
        ("DICOMWEB_MAX_UPLOAD_BYTES", "8G"),
        ("DICOMWEB_MAX_PARTS", "1e4"),
        ("DICOMWEB_WORKERS", "four"),
        ("DICOMWEB_DECODED_CACHE_MB", "-1"),
        ("DICOMWEB_ACCESS_LOG", "maybe"),
        ("DICOMWEB_LOG_LEVEL", "loud"),
    ],
)
def test_malformed_setting_is_one_line_and_status_2(tmp_path: Path, variable: str, value: str) -> None:
    done = run("serve", "--data", str(tmp_path / "data"), env={variable: value}, timeout=60)
    assert_one_line_error(done, 2, variable, value)


def test_malformed_settings_stop_import_and_verify_too(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert_one_line_error(
        run("import", "--data", data, str(tmp_path), env={"DICOMWEB_WORKERS": "x"}), 2, "DICOMWEB_WORKERS"
    )
    assert_one_line_error(run("verify", "--data", data, "--database-url", "not a url"), 2, "--database-url")


def test_broken_codec_stack_refuses_import_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "ct.dcm"
    source.write_bytes(new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes()))
    done = run("import", "--data", str(tmp_path / "data"), "--quiet", str(source), env=BROKEN_CODECS)
    assert_one_line_error(done, 1, "cannot make layered JPEG 2000 masters", "loading OpenJPEG")
    # Storing alone needs no codec: it goes on, and says loudly that masters cannot be made here.
    stored = run(
        "import", "--data", str(tmp_path / "data"), "--quiet", "--no-masters", str(source), env=BROKEN_CODECS
    )
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert "dicomweb: warning: cannot make layered JPEG 2000 masters" in stored.stderr
    assert "1 waiting for a master" in " ".join(stored.stdout.split())


# ---- import: the summary and the report ------------------------------------------------------------


def lines_of(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def read_report(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(row["path"]).name: row for row in csv.DictReader(fh)}


def make_folder(root: Path) -> Path:
    """A folder as users have them: a CT series, the same slice twice, a lossy original, one file the
    master queue keeps, one pydicom warns about, and files that are not DICOM."""
    source = root / "incoming"
    (source / "nested").mkdir(parents=True)
    study = generate_uid()
    ct = [new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study) for _ in range(3)]
    for i, data in enumerate(ct):
        (source / "nested" / f"ct{i}.dcm").write_bytes(data)
    (source / "zz-ct0-again.dcm").write_bytes(ct[0])  # sorted last: the copy kept
    (source / "lossy.dcm").write_bytes(new_uids((PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes()))
    # Pixel values that do not fit its Bits Stored: the master queue keeps it as received, saying why.
    shutil.copy(PYDICOM_TEST_FILES / "J2K_pixelrep_mismatch.dcm", source / "mismatch.dcm")
    # Explicit VR announced, implicit VR found: pydicom warns, then reads it.
    shutil.copy(PYDICOM_TEST_FILES / "SC_rgb_jpeg.dcm", source / "odd-vr.dcm")
    for i in range(5):
        (source / f"notes{i}.txt").write_text("not DICOM")
    return source


def test_import_summary_counts_add_up_with_reasons_and_files(tmp_path: Path) -> None:
    source = make_folder(tmp_path)
    data, report = tmp_path / "data", tmp_path / "report.csv"

    done = run("import", "--data", str(data), "--report", str(report), str(source), "--quiet")
    assert done.returncode == 1, done.stdout + done.stderr  # some files were refused
    out = lines_of(done.stdout)
    assert "12 file(s):" in out
    assert "6 new instance(s) stored" in out
    assert "0 replaced an instance the archive held (same SOP Instance UID)" in out
    assert "1 repeated an instance of this import (same SOP Instance UID; the last copy is kept)" in out
    assert str(source / "zz-ct0-again.dcm") in out
    # Refusals are their own group, one reason with a few of the user's files and "and N more".
    assert "5 refused, not stored:" in out
    refusal = out.index("5 not a DICOM file: no DICM prefix and no SOP Instance UID")
    assert out[refusal + 1 : refusal + 5] == [
        *(str(source / f"notes{i}.txt") for i in range(3)),
        "and 2 more",
    ]
    # Then what became of the 7 instances: masters, and each reason for keeping one as received.
    assert "6 instance(s) stored by this import:" in out
    assert "3 master(s) made (layered lossless JPEG 2000, checked bit-exact)" in out
    assert "3 kept as received:" in out
    lossy = out.index("2 lossy or not losslessly decodable transfer syntax: JPEG Baseline (Process 1)")
    assert out[lossy + 1 : lossy + 3] == [str(source / "lossy.dcm"), str(source / "odd-vr.dcm")]
    kept = out.index("1 pixel values 0..8191 do not fit signed 13 bits")
    assert out[kept + 1] == str(source / "mismatch.dcm")
    assert "0 waiting for a master" in out
    assert "1 stored file(s) with parser warnings (shown above, and in --report)" in out

    # The warning names the user's file, not the temporary copy, and does not break the progress bar.
    assert f"warning: {source / 'odd-vr.dcm'}: Expected explicit VR, but found implicit VR" in done.stderr
    assert "notes0.txt" not in done.stderr  # a refused file's reason says enough
    assert str(data / "tmp") not in done.stderr + done.stdout

    rows = read_report(report)
    assert len(rows) == 12
    assert rows["ct1.dcm"]["outcome"] == "new" and rows["ct1.dcm"]["master"] == "made"
    assert rows["ct1.dcm"]["sop_instance_uid"].startswith("1.2.826.0.1.3680043.8.498.")
    assert rows["zz-ct0-again.dcm"]["outcome"] == "repeated" and rows["zz-ct0-again.dcm"]["master"] == "made"
    assert rows["ct0.dcm"]["master_reason"] == f"superseded by {source / 'zz-ct0-again.dcm'}"
    assert rows["notes3.txt"]["outcome"] == "refused" and "not a DICOM file" in rows["notes3.txt"]["reason"]
    assert rows["mismatch.dcm"]["master"] == "kept"
    assert rows["mismatch.dcm"]["master_reason"] == "pixel values 0..8191 do not fit signed 13 bits"
    assert rows["odd-vr.dcm"]["warnings"].startswith("Expected explicit VR, but found implicit VR")

    # The same folder again: every instance is replaced, none new; the index holds 6 instances still.
    again = run("import", "--data", str(data), str(source), "--quiet")
    assert again.returncode == 1
    out = lines_of(again.stdout)
    assert "0 new instance(s) stored" in out
    assert "6 replaced an instance the archive held (same SOP Instance UID)" in out
    checked = run("verify", "--data", str(data), "--quiet")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every instance kept as received is counted, with its reason: the lossy originals (recorded at
    # ingest) and the one whose master could not be made.
    assert (
        "checked 6 instance(s): 3 master(s) decoded bit-exact, 0 waiting for a master, 3 kept as received"
        in checked.stdout
    )
    out = lines_of(checked.stdout)
    at = out.index("kept as received, by reason:")
    assert out[at + 1 : at + 3] == [
        "2 lossy or not losslessly decodable transfer syntax: JPEG Baseline (Process 1)",
        "1 pixel values 0..8191 do not fit signed 13 bits",
    ]


def test_import_of_good_files_exits_0_and_missing_paths_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "ct.dcm"
    source.write_bytes(new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes()))
    data = str(tmp_path / "data")
    done = run("import", "--data", data, "--quiet", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 master(s) made (layered lossless JPEG 2000, checked bit-exact)" in lines_of(done.stdout)

    unwritable = tmp_path / "no-such-folder" / "report.csv"
    assert_one_line_error(
        run("import", "--data", data, "--report", str(unwritable), str(source)), 1, "cannot write the report"
    )

    missing = tmp_path / "no-such-folder"
    done = run("import", "--data", data, "--quiet", str(missing))
    assert done.returncode == 1
    out = lines_of(done.stdout)
    assert out[out.index("1 no such file or folder") + 1] == str(missing)


def test_import_then_verify_finds_a_corrupted_blob(tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    study = generate_uid()
    for i in range(3):
        (source / f"ct{i}.dcm").write_bytes(
            new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study)
        )
    data = tmp_path / "data"
    assert run("import", "--data", str(data), "--quiet", str(source)).returncode == 0

    checked = run("verify", "--data", str(data), "--quiet")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "checked 3 instance(s): 3 master(s) decoded bit-exact" in checked.stdout
    assert "0 problem(s)" in checked.stdout and "by reason" not in checked.stdout

    blob = next(p for p in (data / "blobs").rglob("*.dcm"))
    blob.write_bytes(blob.read_bytes()[:-10] + b"corrupted!")
    broken = run("verify", "--data", str(data), "--quiet")
    assert broken.returncode == 1 and "1 problem(s)" in broken.stdout


def test_import_without_masters_leaves_them_to_the_server(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes()))
    done = run("import", "--data", str(tmp_path / "data"), "--quiet", "--no-masters", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 waiting for a master (the server's background queue makes them)" in lines_of(done.stdout)
