"""Layered JPEG 2000 masters: structure, fidelity ladder, the durable queue, fault handling, verify."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pydicom
import pytest
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from storage.archive import Archive
from storage.codec import info
from storage.config import Settings
from storage.dicom_file import parse_fragments
from storage.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storage.mastering import make as masters
from storage.verify import verify_archive
from tests.conftest import (
    PYDICOM_DATA,
    Server,
    new_uids,
    parse_multipart,
    stow,
    wait_for_masters,
)
from tests.samples import sample

CT = PYDICOM_DATA / "693_UNCR.dcm"
STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def copies(source: Path, n: int, tmp: Path, **changes: str) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        path = tmp / f"{source.stem}-{i}.dcm"
        path.write_bytes(new_uids(source.read_bytes(), study=study, series=series, **changes))
        out.append(path)
    return out


async def ingest_copies(archive: Archive, paths: list[Path], tmp: Path) -> list:
    # Ingest consumes its input files: hand it copies.
    staged = []
    for p in paths:
        dest = tmp / f"staged-{p.name}"
        shutil.copyfile(p, dest)
        staged.append(dest)
    return await archive.ingest(staged)


def settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp / "data")


async def stored_dataset(archive: Archive, sop: str) -> tuple[pydicom.Dataset, bytes]:
    key = await archive.index.current_blob(sop)
    data = archive.blobs.local_path(key).read_bytes()
    return pydicom.dcmread(io.BytesIO(data)), data


async def test_master_structure_and_fidelity(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        paths = copies(CT, 1, tmp_path)
        original = pydicom.dcmread(paths[0])
        (outcome,) = await ingest_copies(archive, paths, tmp_path)
        await archive.masters.drain(ladders=True)  # the ladder is measured after the master
        ds, _ = await stored_dataset(archive, outcome.sop_uid)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        # Every other attribute is unchanged, private ones included.
        for elem in original:
            if elem.tag != 0x7FE00010 and elem.tag.element != 0:
                assert ds[elem.tag].value == elem.value
        raw = ds["PixelData"]
        bot, fragments = parse_fragments(raw.value, 0)
        assert len(fragments) == 1 and bot == [0]
        codestream = raw.value[fragments[0][0] : fragments[0][0] + fragments[0][1]]
        head = info(codestream)
        assert head.layers >= 5 and head.plt and head.reversible
        assert head.precision == original.BitsStored and head.signed == (original.PixelRepresentation == 1)
        assert -(-max(head.width, head.height) // (1 << head.levels)) <= 64
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        found = await archive.index.fidelity(
            original.StudyInstanceUID, original.SeriesInstanceUID, outcome.sop_uid
        )
        assert found is not None and found[1] is not None
        (frame,) = orjson.loads(found[1])
        sizes = [step["bytes"] for step in frame["layers"]]
        assert sizes == sorted(sizes) and len(sizes) == head.layers
        assert frame["layers"][-1]["lossless"] and frame["layers"][-1]["max_error"] == 0
        assert not frame["layers"][0]["lossless"] and frame["layers"][0]["psnr"] > 30
        assert frame["levels"][0] == {"rows": 512, "columns": 512}
        report = await verify_archive(archive)
        assert report.ok and report.masters == 1
    finally:
        await archive.close()


@pytest.mark.parametrize("fault", ["encoder", "verification"])
async def test_forced_failure_keeps_instance_as_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    if fault == "encoder":

        def broken_encoder(*args, **kwargs):
            raise RuntimeError("simulated encoder crash")

        monkeypatch.setattr(masters, "encode_master", broken_encoder)
    else:
        real_decode = masters.decode
        monkeypatch.setattr(masters, "decode", lambda cs, **kw: real_decode(cs, **kw) + 1)
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        paths = copies(CT, 2, tmp_path)
        outcomes = await ingest_copies(archive, paths, tmp_path)
        await archive.masters.drain()
        assert (await archive.index.job_counts()) == {"kept": 2}
        for path, outcome in zip(paths, outcomes, strict=True):
            _, data = await stored_dataset(archive, outcome.sop_uid)
            assert data == path.read_bytes(), "the received file must be kept exactly"
            state = await archive.index.job_state(outcome.sop_uid)
            assert state[0] == "kept"
            assert ("encoder failure" in state[1]) if fault == "encoder" else ("does not decode" in state[1])
        # Ingest left the checksum to the master queue, which computed it when it kept the file.
        checksums = {sop: sha for sop, _, sha, _, _ in await archive.index.checksums()}
        assert checksums == {
            o.sop_uid: hashlib.sha256(p.read_bytes()).hexdigest()
            for p, o in zip(paths, outcomes, strict=True)
        }
        assert (await verify_archive(archive)).ok
        assert not list((archive.settings.tmp_dir).glob("*.dcm")), "no master file left behind"
    finally:
        await archive.close()


def test_masters_name_this_server_as_their_writer(server: Server, client: httpx.Client) -> None:
    """PS3.10 7.1: the File Meta Information of a master names this server's implementation, not whoever
    wrote the input (GDCM wrote WG04's 693_UNCR, Clunie's dctool the US and CR)."""
    for name in ("693_UNCR.dcm", "US1_J2KR.dcm"):
        original = pydicom.dcmread(sample(name))
        data = new_uids(sample(name).read_bytes())
        assert stow(client, [data]).status_code == 200
        wait_for_masters(client)
        ds = pydicom.dcmread(io.BytesIO(data))
        url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        [(_headers, body)] = parse_multipart(client.get(url, headers=STORED))
        meta = pydicom.dcmread(io.BytesIO(body)).file_meta
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert meta.ImplementationClassUID != original.file_meta.ImplementationClassUID
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
        assert "SourceApplicationEntityTitle" not in meta  # the input's writer's AE title
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_implementation_identity_is_well_formed() -> None:
    uid = IMPLEMENTATION_CLASS_UID
    assert uid == generate_uid(
        prefix=PYDICOM_ROOT_UID, entropy_srcs=["dicomweb-progressive", "Implementation Class UID"]
    )
    assert pydicom.uid.UID(uid).is_valid and len(uid) <= 64  # PS3.5 9.1
    name = IMPLEMENTATION_VERSION_NAME
    assert 1 <= len(name) <= 16 and name.isascii() and "\\" not in name  # SH (PS3.5 6.2)


async def test_queue_survives_restart(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    archive = Archive(cfg)
    await archive.open(start_masters=False)
    paths = copies(CT, 3, tmp_path)
    outcomes = await ingest_copies(archive, paths, tmp_path)
    assert (await archive.index.job_counts()) == {"pending": 3}
    # Files waiting for their master have no checksum yet: the master gets one.
    assert {sha for _, _, sha, _, _ in await archive.index.checksums()} == {""}
    await archive.close()  # "crash" before any master was made

    archive = Archive(cfg)
    await archive.open()
    try:
        await archive.masters.drain(ladders=True)
        assert (await archive.index.job_counts()) == {}
        for path, outcome in zip(paths, outcomes, strict=True):
            ds, data = await stored_dataset(archive, outcome.sop_uid)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
            checksums = {sop: sha for sop, _, sha, _, _ in await archive.index.checksums()}
            assert checksums[outcome.sop_uid] == hashlib.sha256(data).hexdigest()
            assert np.array_equal(ds.pixel_array, pydicom.dcmread(path).pixel_array)
    finally:
        await archive.close()


# What is kept as received, and the reason counted for it.
KEPT = {
    "SC_rgb_jpeg_dcmtk.dcm": "lossy or not losslessly decodable transfer syntax: JPEG Baseline (Process 1)",
    "rtplan.dcm": "no pixel data",
    "MR2_J2KI.dcm": "lossy or not losslessly decodable transfer syntax: JPEG 2000 Image Compression",
    "liver.dcm": "Bits Allocated 1 (masters hold 8 or 16)",
}


async def test_lossy_and_non_image_objects_are_kept_as_received(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        paths = [copies(sample(name), 1, tmp_path)[0] for name in KEPT]
        outcomes = await ingest_copies(archive, paths, tmp_path)
        await archive.masters.drain()
        assert (await archive.index.job_counts()) == {"kept": len(KEPT)}, "counted as kept, never queued"
        assert await archive.index.kept_reasons() == {reason: 1 for reason in KEPT.values()}
        for path, outcome, reason in zip(paths, outcomes, KEPT.values(), strict=True):
            _, data = await stored_dataset(archive, outcome.sop_uid)
            assert data == path.read_bytes()
            assert await archive.index.job_state(outcome.sop_uid) == ("kept", reason)
        report = await verify_archive(archive)
        assert report.ok and report.masters == 0
        assert sorted(report.kept) == sorted(
            (o.sop_uid, r) for o, r in zip(outcomes, KEPT.values(), strict=True)
        )
        assert report.kept_reasons == {reason: 1 for reason in KEPT.values()}
    finally:
        await archive.close()


async def test_colour_jpeg2000_lossless_becomes_a_master(tmp_path: Path) -> None:
    """WG04 US1_J2KR: RGB in a reversible JPEG 2000 codestream, Photometric Interpretation YBR_RCT."""
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        source = sample("US1_J2KR.dcm")
        assert pydicom.dcmread(source).PhotometricInterpretation == "YBR_RCT"
        (outcome,) = await ingest_copies(archive, copies(source, 1, tmp_path), tmp_path)
        await archive.masters.drain(ladders=True)
        assert await archive.index.job_counts() == {}
        ds, _ = await stored_dataset(archive, outcome.sop_uid)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert ds.PhotometricInterpretation == "YBR_RCT"
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(sample("US1_UNCR.dcm")).pixel_array)
        report = await verify_archive(archive)
        assert report.ok and report.masters == 1 and report.kept == []
    finally:
        await archive.close()


def test_status_counts_what_is_kept_per_reason(tmp_path: Path) -> None:
    server = Server(tmp_path / "data")
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            files = [new_uids(sample(name).read_bytes()) for name in (*KEPT, "US1_J2KR.dcm", "693_UNCR.dcm")]
            assert stow(client, files).status_code == 200
            wait_for_masters(client)
            status = client.get("/status").json()
            assert status["instances"] == len(files)
            assert status["pending_masters"] == 0
            assert status["kept_as_received"] == len(KEPT)
            assert status["kept_as_received_reasons"] == {reason: 1 for reason in KEPT.values()}
            # The colour JPEG 2000 input is a master: the layered resources answer for it.
            [us] = client.get("/instances", params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1"}).json()
            url = us["00081190"]["Value"][0]
            assert client.get(url + "/layers").status_code == 200
            for accept, params in (
                ("image/jp2", {"layers": "1"}),
                ("image/jp2", {"fsiz": "100,100"}),
                ("image/jphc", {}),
            ):
                response = client.get(url + "/frames/1", params=params, headers={"Accept": accept})
                assert response.status_code == 200, (accept, params, response.text)
    finally:
        server.stop()


async def test_verify_finds_a_corrupted_blob(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        (outcome,) = await ingest_copies(archive, copies(CT, 1, tmp_path), tmp_path)
        await archive.masters.drain()
        key = await archive.index.current_blob(outcome.sop_uid)
        path = archive.blobs.local_path(key)
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
        report = await verify_archive(archive)
        assert not report.ok and "checksum" in report.problems[0]
    finally:
        await archive.close()


def test_killed_server_loses_nothing_and_finishes_masters(tmp_path: Path) -> None:
    """Instances acknowledged by STOW survive a SIGKILL; the queue resumes after restart."""
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    study = generate_uid()
    files = [new_uids(CT.read_bytes(), study=study, InstanceNumber=str(i)) for i in range(12)]
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            r = stow(client, files)
            assert r.status_code == 200
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    server = Server(data_dir)
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            wait_for_masters(client)
            parts = parse_multipart(client.get(f"/studies/{study}", headers=STORED))
            assert len(parts) == len(files)
            originals = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for f in files}
            for headers, body in parts:
                assert "1.2.840.10008.1.2.4.90" in headers["content-type"]
                got = pydicom.dcmread(io.BytesIO(body))
                want = pydicom.dcmread(io.BytesIO(originals[got.SOPInstanceUID]))
                assert np.array_equal(got.pixel_array, want.pixel_array)
    finally:
        server.stop()


def test_event_loop_stays_responsive_while_masters_are_made(server: Server, client: httpx.Client) -> None:
    study = generate_uid()
    files = [new_uids((PYDICOM_DATA / "MR2_UNCR.dcm").read_bytes(), study=study) for _ in range(4)]
    assert stow(client, files).status_code == 200
    # While four 1024x1024 masters are encoded, a request is answered without waiting for them.
    assert client.get("/status").json()["pending_masters"] >= 1
    assert httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200
    deadline = time.time() + 120
    while client.get("/status").json()["pending_masters"] and time.time() < deadline:
        time.sleep(0.2)
