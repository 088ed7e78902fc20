"""The fidelity ladder measured after the master (storage/ladder.py, issue 15): masters are made without
decoding their lossy layers, a low-priority ladder job of the master queue measures them once no master
job is pending, and every reader copes with a ladder not measured yet."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import orjson
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from storage.archive import Archive
from storage.blobs import new_blob_key
from storage.codec import cut, decode, fidelity_ladder, info
from storage.config import Settings
from storage.dicom_file import frame_from_file
from storage.ladder import LADDER_JOB, ladder_measured, measure_master
from storage.mastering.make import make_master
from storage.preview import instance_preview_layers
from tests.conftest import PYDICOM_DATA, Server, new_uids, parse_multipart, stow, wait_for_masters
from tests.index_helpers import new_postgres_database
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster

CT = PYDICOM_DATA / "693_UNCR.dcm"
MR = PYDICOM_DATA / "MR2_UNCR.dcm"


def settings(tmp: Path, **changes: object) -> Settings:
    return Settings(data_dir=tmp / "data", **changes)  # type: ignore[arg-type]


def staged(source: Path, tmp: Path, **uids: str) -> Path:
    """A copy of `source` with new (or given) UIDs, to hand to ingest (which consumes its files)."""
    path = tmp / f"{generate_uid()}.dcm"
    path.write_bytes(new_uids(source.read_bytes(), **uids))
    return path


async def stored_codestreams(archive: Archive, sop: str) -> list[bytes]:
    found = await archive.index.ladder_of(sop)
    assert found is not None
    key, _, frames = found

    def read(path: Path) -> list[bytes]:
        with open(path, "rb") as fh:
            return [frame_from_file(fh, pieces) for pieces in frames]

    async with archive.blobs.local_file(key) as path:
        return await asyncio.to_thread(read, path)


def expected_ladder(codestream: bytes) -> list[dict]:
    """What the master queue measured inside the master before this change, on the same codestream."""
    return [step.to_dict() for step in fidelity_ladder(codestream, decode(codestream), whole_verified=True)]


async def stored_ladder(archive: Archive, sop: str) -> list[dict] | None:
    found = await archive.index.ladder_of(sop)
    assert found is not None
    return None if found[1] is None else orjson.loads(found[1])


async def make_and_apply(archive: Archive, sop: str, tmp: Path) -> str:
    """Make the master of `sop`'s received blob and swap it in, as the master queue does; its key."""
    key = await archive.index.current_blob(sop)
    assert key is not None
    async with archive.blobs.local_file(key) as path:
        master = await asyncio.to_thread(make_master, path, tmp)
    new_key = new_blob_key(master.parsed.series_uid, sop)
    size = await archive.blobs.put_file(new_key, master.path)
    master.path.unlink(missing_ok=True)
    assert await archive.index.apply_master(key, master.parsed, new_key, size, master.fidelity, "0" * 64)
    return new_key


def test_make_master_records_only_what_is_free(tmp_path: Path) -> None:
    master = make_master(staged(CT, tmp_path), tmp_path)
    (frame,) = master.fidelity
    ds = pydicom.dcmread(master.path)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    head = info(codestream)
    assert frame["rows"] == frame["columns"] == 512 and len(frame["levels"]) == head.levels + 1
    steps = frame["layers"]
    assert [s["layers"] for s in steps] == list(range(1, head.layers + 1))
    assert [s["bytes"] for s in steps] == [len(cut(codestream, layers=k)) for k in range(1, head.layers + 1)]
    *lossy, last = steps
    for s in lossy:
        assert (s["psnr"], s["max_error"], s["lossless"], s["measured"]) == (None, None, False, False)
    # The last prefix is the whole verified master: known lossless without another decode.
    assert (last["psnr"], last["max_error"], last["lossless"], last["measured"]) == (None, 0, True, True)
    assert not ladder_measured(master.fidelity)
    assert instance_preview_layers(master.fidelity) is not None  # the byte budget's bound


async def test_the_ladder_job_measures_what_the_master_left_out(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        # While an upload is in progress no ladder job starts, and a master a viewer wants is made
        # anyway: the master's ladder can be seen unmeasured, with its job waiting.
        async with archive.masters.upload():
            (outcome,) = await archive.ingest([staged(CT, tmp_path)])
            archive.masters.want(outcome.series_uid)
            deadline = time.monotonic() + 60
            # Polled: the state is in the index.
            while (await archive.index.job_counts()) != {LADDER_JOB: 1} and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert await archive.index.job_counts() == {LADDER_JOB: 1}
            ladder = await stored_ladder(archive, outcome.sop_uid)
            assert ladder is not None and not ladder_measured(ladder)
            assert (await archive.status())["pending_ladders"] == 1
            rec = (await archive.index.instances(outcome.study_uid, outcome.series_uid, outcome.sop_uid))[0]
            assert rec.is_master and await archive.layer_errors(rec, 1) is None  # unknown: decode all
        await archive.masters.drain(ladders=True)
        assert await archive.index.job_counts() == {}
        assert (await archive.status())["pending_ladders"] == 0
        measured = await stored_ladder(archive, outcome.sop_uid)
        assert measured is not None and ladder_measured(measured)
        (codestream,) = await stored_codestreams(archive, outcome.sop_uid)
        expected = expected_ladder(codestream)
        assert [{k: v for k, v in s.items() if k != "measured"} for s in measured[0]["layers"]] == expected
        # Everything the master recorded without measuring is unchanged.
        assert {k: v for k, v in measured[0].items() if k != "layers"} == {
            k: v for k, v in ladder[0].items() if k != "layers"
        }
        assert await archive.layer_errors(rec, 1) == tuple(s["max_error"] for s in expected)
    finally:
        await archive.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_ladder_jobs_wait_for_every_pending_master(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """Checked through the index: the claim itself refuses ladder jobs while a master job is pending,
    claimed by a replica or not, so the order holds whatever the timing (on PostgreSQL, in the statement
    that locks the rows with SKIP LOCKED)."""
    url = ""
    if database == "postgresql":
        url = await new_postgres_database(request.getfixturevalue("postgres"))
    archive = Archive(settings(tmp_path, database_url=url) if url else settings(tmp_path))
    await archive.open(start_masters=False)
    try:
        series = generate_uid()
        first, second = await archive.ingest([staged(CT, tmp_path, series=series) for _ in range(2)])
        await make_and_apply(archive, first.sop_uid, tmp_path)
        assert await archive.index.job_counts() == {"pending": 1, LADDER_JOB: 1}
        index = archive.index
        assert not await index.ladder_claimable()
        assert await index.claim_ladders("me", 4, 60.0) == []
        # Claimed by a replica and being made: still pending, still first.
        assert [sop for sop, _, _ in await index.claim_masters("other", 4, 60.0)] == [second.sop_uid]
        assert await index.claim_ladders("me", 4, 60.0) == []
        await make_and_apply(archive, second.sop_uid, tmp_path)
        assert await index.ladder_claimable()
        claimed = await index.claim_ladders("me", 4, 60.0)
        # Newest master first; each claim counts an attempt, like a master job's.
        assert [sop for sop, _, _ in claimed] == [second.sop_uid, first.sop_uid]
        assert await index.claim_ladders("someone else", 4, 60.0) == []  # leased
    finally:
        await archive.close()


async def test_a_ladder_job_left_by_a_dead_process_is_redone(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open(start_masters=False)
    try:
        (outcome,) = await archive.ingest([staged(CT, tmp_path)])
        await make_and_apply(archive, outcome.sop_uid, tmp_path)
        # A process of this host that claimed the job and was killed (no such pid runs).
        dead = f"{archive.masters.owner.split(':')[0]}:{2**22 + 7}:deadbeef"
        assert len(await archive.index.claim_ladders(dead, 1, 600.0)) == 1
    finally:
        await archive.close()
    archive = Archive(settings(tmp_path))
    await archive.open()
    try:
        await archive.masters.drain(ladders=True)
        ladder = await stored_ladder(archive, outcome.sop_uid)
        assert ladder is not None and ladder_measured(ladder)
    finally:
        await archive.close()


async def test_a_replaced_blob_is_not_given_the_old_ladder(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open(start_masters=False)
    try:
        (outcome,) = await archive.ingest([staged(CT, tmp_path)])
        sop = outcome.sop_uid
        old_key = await make_and_apply(archive, sop, tmp_path)
        found = await archive.index.ladder_of(sop)
        assert found is not None
        async with archive.blobs.local_file(old_key) as path:
            old_ladder = await asyncio.to_thread(measure_master, path, found[2])
        # Re-uploaded (different pixels, same SOP Instance UID) before the ladder job wrote its result.
        replacement = staged(MR, tmp_path, study=outcome.study_uid, series=outcome.series_uid, sop=sop)
        await archive.ingest([replacement])
        assert not await archive.index.store_ladder(sop, old_key, old_ladder)
        assert await stored_ladder(archive, sop) is None  # the received file: no master, no ladder
        new_key = await make_and_apply(archive, sop, tmp_path)
        assert not await archive.index.store_ladder(sop, old_key, old_ladder)
        unmeasured = await stored_ladder(archive, sop)
        assert unmeasured is not None and not ladder_measured(unmeasured)
        assert unmeasured[0]["rows"] == 1024  # MR2, not the CT's ladder
        # Its own job measures it, and doing that twice is harmless.
        assert [key for _, key, _ in await archive.index.claim_ladders("me", 4, 60.0)] == [new_key]
        measured = await archive.masters.measure_now(sop)
        assert measured is not None and measured == orjson.dumps(await stored_ladder(archive, sop))
        assert await archive.masters.measure_now(sop) == measured
        (codestream,) = await stored_codestreams(archive, sop)
        steps = orjson.loads(measured)[0]["layers"]
        assert [{k: v for k, v in s.items() if k != "measured"} for s in steps] == expected_ladder(codestream)
        assert await archive.index.job_counts() == {}
    finally:
        await archive.close()


# ---- readers, over HTTP against a server that measures ladders on demand only ----------------------

POLICY = """
[[rule]]
name = "CT"
modality = ["CT"]
action = "lossy"
max_ratio = 10
max_error = 120
"""


@pytest.fixture(scope="module")
def on_demand(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ladder")
    (root / "policy.toml").write_text(POLICY)
    env = {"DICOMWEB_LADDER_WORKERS": "0", "DICOMWEB_LIFECYCLE": str(root / "policy.toml")}
    srv = Server(root / "data", env)
    try:
        with httpx.Client(base_url=srv.root, timeout=120) as client:
            study, series = generate_uid(), generate_uid()
            files = [new_uids(CT.read_bytes(), study=study, series=series) for _ in range(3)]
            assert stow(client, files).status_code == 200
            wait_for_masters(client)
            sops = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
            yield client, f"/studies/{study}/series/{series}", sops
    finally:
        srv.stop()  # also when the set-up fails: no server left running


def test_status_counts_pending_ladders(on_demand) -> None:
    client, _, _ = on_demand
    assert client.get("/status").json()["pending_ladders"] >= 2  # one is measured by another test


def test_series_layers_say_which_are_measured(on_demand) -> None:
    client, series, sops = on_demand
    body = client.get(series + "/layers").json()
    rows = {r["sop_instance_uid"]: r for r in body["instances"]}
    unmeasured = rows[sops[2]]
    assert unmeasured["master"] and not unmeasured["measured"]
    # The byte budget's bound: the most layers within a fifth of the lossless bytes.
    ladder = client.get(f"{series}/instances/{sops[0]}/layers").json()["frames"][0]["layers"]
    budget = 0.2 * ladder[-1]["bytes"]
    assert unmeasured["preview_layers"] == max(s["layers"] for s in ladder if s["bytes"] <= budget)


def test_instance_layers_are_measured_on_demand_and_stored(on_demand) -> None:
    client, series, sops = on_demand
    before = client.get("/status").json()["pending_ladders"]
    url = f"{series}/instances/{sops[1]}/layers"
    body = client.get(url).json()
    assert body["measured"] is True
    steps = body["frames"][0]["layers"]
    assert all(s["measured"] for s in steps) and all(s["max_error"] is not None for s in steps)
    assert steps[0]["psnr"] > 30 and not steps[0]["lossless"] and steps[-1]["lossless"]
    assert body["preview_layers"] == 2  # the CT's measured choice (storage/preview.py's table)
    assert client.get("/status").json()["pending_ladders"] == before - 1
    rows = {r["sop_instance_uid"]: r for r in client.get(series + "/layers").json()["instances"]}
    assert rows[sops[1]]["measured"] and rows[sops[1]]["preview_layers"] == 2


def test_preview_frames_of_an_unmeasured_instance_stay_within_the_budget(on_demand) -> None:
    client, series, sops = on_demand
    rows = {r["sop_instance_uid"]: r for r in client.get(series + "/layers").json()["instances"]}
    count = rows[sops[2]]["preview_layers"]
    url = f"{series}/instances/{sops[2]}/frames/1"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    r = client.get(url, params={"layers": "preview"}, headers=accept)
    assert r.status_code == 200, r.text
    ((headers, part),) = parse_multipart(r)
    assert "1.2.840.10008.1.2.4.91" in headers["content-type"]
    # The same pixels as sops[0]: the same master, whose measured ladder gives the cut sizes.
    ladder = client.get(f"{series}/instances/{sops[0]}/layers").json()["frames"][0]["layers"]
    assert len(part) == ladder[count - 1]["bytes"] <= 0.2 * ladder[-1]["bytes"]
    rows = {r["sop_instance_uid"]: r for r in client.get(series + "/layers").json()["instances"]}
    assert not rows[sops[2]]["measured"], "a preview does not measure the ladder"


def test_thumbnail_of_an_unmeasured_instance(on_demand) -> None:
    client, series, sops = on_demand
    r = client.get(f"{series}/instances/{sops[2]}/thumbnail", headers={"Accept": "image/jpeg"})
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"


def test_lifecycle_dry_run_skips_unmeasured_masters(on_demand) -> None:
    client, series, _ = on_demand
    rows = {r["sop_instance_uid"]: r for r in client.get(series + "/layers").json()["instances"]}
    unmeasured = sum(1 for r in rows.values() if r["master"] and not r["measured"])
    measured = len(rows) - unmeasured
    assert unmeasured >= 1
    r = client.get("/lifecycle")
    assert r.status_code == 200, r.text
    (ct,) = r.json()["rules"]
    assert ct["unmeasured_instances"] == unmeasured
    assert ct["instances"] == measured  # only masters with a measured ladder are planned
