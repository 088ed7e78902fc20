"""Storage tiers (issue 16): a study moved to the cold blob store (a folder, or an S3 bucket on moto's
server) answers every WADO-RS resource with the same bytes from there, its hot blobs are gone, a DELETE
removes its cold blobs, a process killed while moving loses nothing, and WADO-RS reads (not QIDO searches)
record when a study was last read."""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from bench.cluster import BUCKET, S3_CREDENTIALS
from storage import Archive, BlobStoreUnavailable, Settings
from storage.access_times import AccessTimes
from tests.conftest import Server, new_uids, parse_multipart, stow, wait_for_masters
from tests.samples import sample
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster
from tests.test_s3_blobs import s3_endpoint  # noqa: F401 - the module's S3 server (moto)

REPO = Path(__file__).resolve().parent.parent
OCTET = "application/octet-stream"
STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
# A master (16-bit CT), a multi-frame master (MR, 10 frames) and a lossy JPEG kept as received.
SAMPLES = ("CT_small.dcm", "emri_small.dcm", "SC_rgb_jpeg_dcmtk.dcm")


def study_files(study: str, copies: int = 1) -> list[bytes]:
    series = generate_uid()
    return [
        new_uids(sample(name).read_bytes(), study=study, series=series, InstanceNumber=str(i))
        for i, name in enumerate(SAMPLES * copies)
    ]


def sop_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def index_rows(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return db.execute(sql, args).fetchall()


def every_resource(client: httpx.Client, study: str) -> dict[str, tuple[bytes, str | None]]:
    """The body and ETag of every WADO-RS (and QIDO-RS) resource of the study, by a name for the assertion:
    a move between tiers keeps the bytes, so it keeps both (a viewer's cached copy stays valid: 304)."""
    got: dict[str, tuple[bytes, str | None]] = {}

    def fetch(name: str, url: str, **headers: str) -> None:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (name, response.status_code, response.text[:200])
        etag = response.headers.get("etag")
        got[name] = (response.content, etag)
        if etag is not None:
            again = client.get(url, headers={**headers, "If-None-Match": etag})
            assert again.status_code == 304, (name, again.status_code)

    fetch("study", f"/studies/{study}", **STORED)
    fetch("study metadata", f"/studies/{study}/metadata")
    fetch("qido study", f"/studies?StudyInstanceUID={study}&includefield=all")
    fetch("qido instances", f"/studies/{study}/instances?includefield=all")
    for item in client.get(f"/studies/{study}/instances").json():
        series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        url = f"/studies/{study}/series/{series}/instances/{sop}"
        fetch(
            f"series metadata {series}",
            f"/studies/{study}/series/{series}/metadata",
            **{"Accept-Encoding": "gzip"},
        )
        fetch(f"instance {sop}", url, **STORED)
        fetch(f"instance native {sop}", url, Accept='multipart/related; type="application/dicom"')
        fetch(f"frame 1 {sop}", f"{url}/frames/1", Accept=OCTET)
        fetch(f"rendered {sop}", f"{url}/rendered", Accept="image/png")
        fetch(f"thumbnail {sop}", f"{url}/thumbnail", Accept="image/jpeg")
        [meta] = client.get(f"{url}/metadata").json()
        fetch(f"pixel bulk data {sop}", meta["7FE00010"]["BulkDataURI"], Accept=OCTET)
        layers = client.get(f"{url}/layers")
        if layers.status_code == 200 and len(layers.json()["frames"][0]["layers"]) > 1:  # a master
            fetch(f"layers cut {sop}", f"{url}/frames/1?layers=1", Accept="image/jp2")
    return got


def blob_keys(data_dir: Path, study: str) -> list[str]:
    """The blob keys the index rows of the study name."""
    return sorted(
        key for (key,) in index_rows(data_dir, "SELECT blob_key FROM instances WHERE study_uid=?", study)
    )


def blob_files(folder: Path, series: str) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.parent.name == series)


def series_of(client: httpx.Client, study: str) -> str:
    [item] = client.get(f"/studies/{study}/series").json()
    return item["0020000E"]["Value"][0]


def run_move(data_dir: Path, cold_url: str, studies: list[str], **settings: Any) -> list[tuple[int, int]]:
    return asyncio.run(move(data_dir, cold_url, studies, **settings))


async def move(data_dir: Path, cold_url: str, studies: list[str], **settings: Any) -> list[tuple[int, int]]:
    """Move studies to the cold tier from this process, beside the running server (as another replica
    or the lifecycle command would)."""
    archive = Archive(Settings(data_dir=data_dir, cold_blob_url=cold_url, **settings))
    await archive.open(start_masters=False, parser_processes=1)
    try:
        return [await archive.move_study_to_cold(study) for study in studies]
    finally:
        await archive.close()


# ---- a cold folder ---------------------------------------------------------------------------------


def test_moved_study_answers_the_same_bytes_from_a_cold_folder(tmp_path: Path) -> None:
    data_dir, cold = tmp_path / "data", tmp_path / "cold"
    server = Server(data_dir, {"DICOMWEB_COLD_BLOB_URL": str(cold)})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            status = client.get("/status").json()
            assert status["cold_tier"] == str(cold.resolve())
            study, other = generate_uid(), generate_uid()
            assert stow(client, study_files(study)).status_code == 200
            assert stow(client, study_files(other)).status_code == 200
            wait_for_masters(client)
            series = series_of(client, study)
            before = every_resource(client, study)
            # (The received files the masters replaced may still be there, for a grace period.)
            hot_before = [data_dir / "blobs" / key for key in blob_keys(data_dir, study)]
            assert len(hot_before) == len(SAMPLES) and all(p.is_file() for p in hot_before)
            hot_bytes = sum(p.stat().st_size for p in hot_before)

            [(moved, moved_bytes)] = run_move(data_dir, str(cold), [study])
            assert moved == len(SAMPLES)
            assert moved_bytes == hot_bytes
            assert not any(p.is_file() for p in hot_before)  # the hot store no longer has them
            keys = blob_keys(data_dir, study)
            assert keys == sorted(f"cold/{p.relative_to(data_dir / 'blobs')}" for p in hot_before)
            assert blob_files(cold, series) == sorted(cold / key.removeprefix("cold/") for key in keys)
            tiers = index_rows(
                data_dir, "SELECT tier, count(*) FROM instances WHERE study_uid=? GROUP BY tier", study
            )
            assert tiers == [("cold", len(SAMPLES))]
            assert index_rows(data_dir, "SELECT count(*) FROM blob_trash") == [(0,)]
            # stats shows the bytes on each tier.
            assert client.get("/stats").json()["totals"]["cold_bytes"] == hot_bytes

            after = every_resource(client, study)
            assert after.keys() == before.keys()
            for name in before:
                assert after[name] == before[name], name
            # Moving again moves nothing; the other study stayed hot.
            assert run_move(data_dir, str(cold), [study]) == [(0, 0)]
            assert not any(key.startswith("cold/") for key in blob_keys(data_dir, other))

            assert client.delete(f"/studies/{study}").status_code in (200, 204)
            assert blob_files(cold, series) == []
            assert client.get(f"/studies/{study}/metadata").status_code == 404
    finally:
        server.stop()


def test_moved_study_on_postgresql(tmp_path: Path, postgres: str) -> None:  # noqa: F811
    """The same on PostgreSQL (the scale-out index): a move made by another process is served by the
    server from the cold folder, and DELETE removes the cold blobs."""
    data_dir, cold = tmp_path / "data", tmp_path / "cold"
    server = Server(data_dir, {"DICOMWEB_COLD_BLOB_URL": str(cold), "DICOMWEB_DATABASE_URL": postgres})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            study = generate_uid()
            assert stow(client, study_files(study)).status_code == 200
            wait_for_masters(client)
            series = series_of(client, study)
            before = every_resource(client, study)
            [(moved, _)] = run_move(data_dir, str(cold), [study], database_url=postgres)
            assert moved == len(SAMPLES)
            assert len(blob_files(cold, series)) == len(SAMPLES)
            after = every_resource(client, study)
            for name in before:
                assert after[name] == before[name], name
            assert client.delete(f"/studies/{study}").status_code in (200, 204)
            assert blob_files(cold, series) == []
    finally:
        server.stop()


def test_reupload_after_a_move_replaces_the_cold_blob(tmp_path: Path) -> None:
    """A study stored again after it moved gets hot blobs; the cold ones it replaced go through the trash."""
    data_dir, cold = tmp_path / "data", tmp_path / "cold"
    server = Server(data_dir, {"DICOMWEB_COLD_BLOB_URL": str(cold)})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            study = generate_uid()
            files = study_files(study)
            assert stow(client, files).status_code == 200
            wait_for_masters(client)
            series = series_of(client, study)
            run_move(data_dir, str(cold), [study])
            assert len(blob_files(cold, series)) == len(SAMPLES)
            assert stow(client, files).status_code == 200
            wait_for_masters(client)
            assert blob_files(cold, series) == []
            assert all((data_dir / "blobs" / key).is_file() for key in blob_keys(data_dir, study))
            rows = index_rows(data_dir, "SELECT tier FROM instances WHERE study_uid=?", study)
            assert rows == [("hot",)] * len(SAMPLES)
            parts = parse_multipart(client.get(f"/studies/{study}", headers=STORED))
            assert {sop_of(body) for _, body in parts} == {sop_of(f) for f in files}
    finally:
        server.stop()


async def test_archive_with_cold_instances_refuses_to_start_without_the_cold_store(tmp_path: Path) -> None:
    data_dir, cold = tmp_path / "data", tmp_path / "cold"
    server = Server(data_dir, {"DICOMWEB_COLD_BLOB_URL": str(cold)})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            study = generate_uid()
            assert stow(client, study_files(study)).status_code == 200
            wait_for_masters(client)
    finally:
        server.stop()
    await move(data_dir, str(cold), [study])
    archive = Archive(Settings(data_dir=data_dir))
    try:
        with pytest.raises(BlobStoreUnavailable, match="DICOMWEB_COLD_BLOB_URL"):
            await archive.open(start_masters=False, parser_processes=1)
    finally:
        await archive.close()
    # The cold store may not be the blob store itself: a move would copy each blob onto itself.
    with pytest.raises(BlobStoreUnavailable, match="itself"):
        Archive(Settings(data_dir=data_dir, cold_blob_url=str(data_dir / "blobs")))


# ---- a cold S3 bucket (moto) -------------------------------------------------------------------------


def cold_objects(endpoint: str, prefix: str) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return sorted(item["Key"] for item in found if item["Key"].endswith(".dcm"))


def test_moved_study_answers_the_same_bytes_from_a_cold_bucket(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data_dir, prefix = tmp_path / "data", f"cold-{os.getpid()}-{time.time_ns()}"
    cold_url = f"s3://{BUCKET}/{prefix}"
    server = Server(data_dir, {**env, "DICOMWEB_COLD_BLOB_URL": cold_url})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            assert client.get("/status").json()["cold_tier"] == f"{cold_url}/ at {s3_endpoint}"
            study = generate_uid()
            assert stow(client, study_files(study)).status_code == 200
            wait_for_masters(client)
            series = series_of(client, study)
            before = every_resource(client, study)
            [(moved, _)] = run_move(
                data_dir, cold_url, [study], s3_endpoint=s3_endpoint, s3_region="us-east-1"
            )
            assert moved == len(SAMPLES)
            assert all(key.startswith("cold/") for key in blob_keys(data_dir, study))
            assert not any(
                (data_dir / "blobs" / key.removeprefix("cold/")).exists()
                for key in blob_keys(data_dir, study)
            )
            objects = cold_objects(s3_endpoint, prefix)
            assert len([k for k in objects if f"/{series}/" in k]) == len(SAMPLES)
            after = every_resource(client, study)
            for name in before:
                assert after[name] == before[name], name
            assert client.delete(f"/studies/{study}").status_code in (200, 204)
            assert [k for k in cold_objects(s3_endpoint, prefix) if f"/{series}/" in k] == []
    finally:
        server.stop()


# ---- a process killed while moving ------------------------------------------------------------------

MOVER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from storage import Archive, BlobStoreUnavailable, Settings

    async def main():
        archive = Archive(Settings(data_dir=Path(sys.argv[1]), cold_blob_url=sys.argv[2]))
        await archive.open(start_masters=False, parser_processes=1)
        print("open", time.monotonic(), flush=True)
        for study in sys.argv[3:]:
            print(study, await archive.move_study_to_cold(study), flush=True)
        print("done", time.monotonic(), flush=True)
        await archive.close()

    asyncio.run(main())
    """
)


def test_killed_mover_leaves_every_instance_readable(tmp_path: Path) -> None:
    """SIGKILL a process moving studies at a random moment: after a restart every instance answers its
    bytes, its row names a blob that exists, the trash is empty; moving again finishes the work and leaves
    no blob behind in either store."""
    data_dir, cold = tmp_path / "data", tmp_path / "cold"
    env = {"DICOMWEB_COLD_BLOB_URL": str(cold)}
    studies = [generate_uid() for _ in range(3)]
    server = Server(data_dir, env)
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            for study in studies:
                assert stow(client, study_files(study, copies=8)).status_code == 200
            wait_for_masters(client)
            before = {
                sop_of(body): body
                for study in studies
                for _, body in parse_multipart(client.get(f"/studies/{study}", headers=STORED))
            }
    finally:
        server.stop()

    # Once to time the moves (on a copy), then for real, killed at a random moment within that time.
    spare = tmp_path / "spare"
    shutil.copytree(data_dir, spare / "data")
    timing = subprocess.run(
        [sys.executable, "-c", MOVER, str(spare / "data"), str(spare / "cold"), *studies],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    moves_time = float(timing[timing.index("done") + 1]) - float(timing[timing.index("open") + 1])
    delay = random.uniform(0, moves_time)
    proc = subprocess.Popen(
        [sys.executable, "-c", MOVER, str(data_dir), str(cold), *studies],
        cwd=REPO,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    said = proc.stdout.readline().decode()
    assert said.startswith("open"), said
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    said += proc.stdout.read().decode()

    def blob_path(key: str) -> Path:
        return cold / key.removeprefix("cold/") if key.startswith("cold/") else data_dir / "blobs" / key

    server = Server(data_dir, env)  # opening the archive empties the trash
    try:
        context = f"killed {delay:.3f} s into {moves_time:.3f} s of moves; it said {said!r}"
        assert index_rows(data_dir, "SELECT count(*) FROM blob_trash") == [(0,)], context
        for (key,) in index_rows(data_dir, "SELECT blob_key FROM instances"):
            assert blob_path(key).is_file(), (key, context)
        with httpx.Client(base_url=server.root, timeout=60) as client:
            got = {
                sop_of(body): body
                for study in studies
                for _, body in parse_multipart(client.get(f"/studies/{study}", headers=STORED))
            }
        assert got == before, context
    finally:
        server.stop()

    subprocess.run(
        [sys.executable, "-c", MOVER, str(data_dir), str(cold), *studies],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    keys = [key for (key,) in index_rows(data_dir, "SELECT blob_key FROM instances")]
    assert all(key.startswith("cold/") for key in keys)
    assert sorted(cold.rglob("*.dcm")) == sorted(blob_path(key) for key in keys)  # no copy left behind
    assert list((data_dir / "blobs").rglob("*.dcm")) == []


# ---- access times ----------------------------------------------------------------------------------


def test_wado_reads_record_access_and_qido_searches_do_not(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            searched, read = generate_uid(), generate_uid()
            for study in (searched, read):
                assert stow(client, study_files(study)).status_code == 200

            def accessed(study: str) -> float:
                [(at,)] = index_rows(data_dir, "SELECT accessed_at FROM studies WHERE study_uid=?", study)
                return at

            assert accessed(searched) == accessed(read) == 0
            assert client.get(f"/studies?StudyInstanceUID={searched}").status_code == 200
            assert client.get(f"/studies/{searched}/series").status_code == 200
            assert client.get(f"/studies/{searched}/instances").status_code == 200
            t0 = time.time()
            assert client.get(f"/studies/{read}/metadata").status_code == 200
            deadline = time.time() + 30
            while accessed(read) == 0 and time.time() < deadline:
                time.sleep(0.05)
            # Written in the background, after the searches were answered: they would have been first.
            assert accessed(read) >= t0 - 1
            assert accessed(searched) == 0
    finally:
        server.stop()


async def test_access_times_write_once_per_study_within_the_resolution() -> None:
    written: list[dict[str, float]] = []

    async def write(times: dict[str, float]) -> None:
        written.append(dict(times))

    clock = AccessTimes(write, resolution=3600, capacity=2)
    for _ in range(100):
        clock.record("1.2.3")
    await clock.close()
    assert [list(batch) for batch in written] == [["1.2.3"]]
    clock.record("1.2.4")
    clock.record("1.2.5")  # pushes 1.2.3 out of the bounded map: its next read is written again
    clock.record("1.2.3")
    await clock.close()
    assert sorted(s for batch in written[1:] for s in batch) == ["1.2.3", "1.2.4", "1.2.5"]
