"""Masters on demand and under load: a viewer's request moves its series to the front of the queue,
cuts of an instance whose master is still being made are encoded on the fly (labelled lossy, equal to
the master's own cut), jobs are leased to one replica at a time, and /status says how far behind the
queue is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.uid import generate_uid

from storage import WHOLE, Archive, Settings, Subset, plan_frame
from storage.codec import decode
from storage.index import Index
from tests.conftest import PYDICOM_DATA, Server, new_uids, stow
from tests.test_masters import CT, copies, ingest_copies

J2K_CUT = "1.2.840.10008.1.2.4.91"
HT_CUT = "1.2.840.10008.1.2.4.203"


def settings(tmp: Path, **changes: object) -> Settings:
    return replace(Settings(data_dir=tmp / "data"), **changes)  # type: ignore[arg-type]


async def test_cut_of_a_pending_master_is_the_masters_own_cut(tmp_path: Path) -> None:
    """No master yet (the queue is not running): a cut is encoded on the fly, labelled .91: for layers
    alone the bytes the master gives once it exists, for fsiz a frame of the same size."""
    archive = Archive(settings(tmp_path, master_wait_seconds=0.0))
    await archive.open(start_masters=False)
    try:
        [outcome] = await ingest_copies(archive, copies(CT, 1, tmp_path), tmp_path)
        [rec] = await archive.instances(outcome.study_uid, outcome.series_uid, outcome.sop_uid)
        assert not rec.is_master
        pending = await archive.hurry_master(rec)
        assert pending.pending_master and not pending.is_master
        cuts = {}
        for subset in (Subset(layers=2), Subset(fsiz=(128, 128)), Subset(layers=1, fsiz=(64, 64))):
            plan = plan_frame("image/jp2", None, pending, subset)
            assert plan is not None, subset
            body, label = await archive.frame(pending, 1, plan, subset)
            assert label == J2K_CUT and body[:2] == b"\xff\x4f"
            cuts[subset] = body
        # More layers than the master has: still the whole codestream, still labelled lossy.
        plan = plan_frame("image/jp2", None, pending, Subset(layers=99))
        assert plan is not None
        whole, label = await archive.frame(pending, 1, plan, Subset(layers=99))
        assert label == J2K_CUT
        # HTJ2K only as a resolution cut; the whole frame waits for the verified master.
        ht = plan_frame("image/jphc", None, pending, Subset(fsiz=(128, 128)))
        assert ht is not None
        assert (await archive.frame(pending, 1, ht, Subset(fsiz=(128, 128))))[1] == HT_CUT
        assert plan_frame("image/jphc", None, pending, WHOLE) is None
        assert plan_frame("image/jp2", "1.2.840.10008.1.2.4.90", pending, WHOLE) is None

        archive.masters.start()
        await archive.drain_masters()
        [master] = await archive.instances(outcome.study_uid, outcome.series_uid, outcome.sop_uid)
        assert master.is_master
        for subset, body in cuts.items():
            plan = plan_frame("image/jp2", None, master, subset)
            assert plan is not None
            from_master, label = await archive.frame(master, 1, plan, subset)
            assert label == J2K_CUT
            if subset.fsiz is None:  # encoded as the master is, and cut the same way: the same bytes
                assert from_master == body, subset
            else:  # reduced before encoding, all its layers: close to the master's resolution level
                plan = plan_frame("image/jp2", None, master, Subset(fsiz=subset.fsiz))
                assert plan is not None
                level, _ = await archive.frame(master, 1, plan, Subset(fsiz=subset.fsiz))
                ours, theirs = decode(body).astype(float), decode(level).astype(float)
                assert ours.shape == theirs.shape, subset
                assert np.mean(np.abs(ours - theirs)) < 0.05 * (np.ptp(theirs) + 1), subset
        full = np.asarray(decode(whole))
        native = np.frombuffer(await archive.native_frame(master, 1), dtype=full.dtype).reshape(full.shape)
        assert np.array_equal(full, native), "the on-the-fly codestream is lossless all the same"
    finally:
        await archive.close()


async def test_asked_for_series_goes_first_even_while_uploads_arrive(tmp_path: Path) -> None:
    """Uploads in progress hold background masters back; the series a viewer asks for is made at once,
    and the others still wait."""
    archive = Archive(settings(tmp_path, master_wait_seconds=20.0))
    await archive.open(start_masters=False)
    try:
        # One after the other: ingest consumes what copies() wrote.
        asked = await ingest_copies(archive, copies(CT, 3, tmp_path), tmp_path)
        others = await ingest_copies(archive, copies(CT, 3, tmp_path), tmp_path)
        async with archive.upload():  # an upload in progress: background masters yield
            archive.masters.start()
            first = asked[0]
            [rec] = await archive.instances(first.study_uid, first.series_uid, first.sop_uid)
            started = time.monotonic()
            now = await archive.hurry_master(rec)
            assert now.is_master, "made while uploads were arriving"
            assert time.monotonic() - started < 20
            for outcome in asked[1:]:  # the rest of its series came with it
                deadline = time.monotonic() + 20
                while not (await archive.instances(outcome.study_uid, outcome.series_uid, outcome.sop_uid))[
                    0
                ].is_master:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            waiting = [(await archive.instances(o.study_uid, o.series_uid, o.sop_uid))[0] for o in others]
            assert not any(r.is_master for r in waiting), "background masters still yield to the upload"
            status = await archive.status()
            assert status["pending_masters"] == 3 and status["oldest_pending_seconds"] is not None
    finally:
        await archive.close()


async def test_jobs_are_leased_to_one_replica_at_a_time(tmp_path: Path) -> None:
    """Two replicas on one index: a claimed job is not claimed again until its lease runs out, then
    another replica takes it over; newest jobs come first."""
    archive = Archive(settings(tmp_path))
    await archive.open(start_masters=False)
    try:
        old = await ingest_copies(archive, copies(CT, 2, tmp_path), tmp_path)
        await asyncio.sleep(0.01)
        new = await ingest_copies(archive, copies(CT, 2, tmp_path), tmp_path)
        index = Index(archive.settings.sql_url)
        try:
            first = await index.claim_masters("replica-a:1:x", 2, lease_seconds=0.5)
            assert {sop for sop, _, _ in first} == {o.sop_uid for o in new}, "newest first"
            second = await index.claim_masters("replica-b:2:y", 10, lease_seconds=30)
            assert {sop for sop, _, _ in second} == {o.sop_uid for o in old}, "never a claimed job"
            assert await index.claim_masters("replica-b:2:y", 10, lease_seconds=30) == []
            await asyncio.sleep(0.6)  # replica a died: its lease runs out
            taken = await index.claim_masters("replica-b:2:y", 10, lease_seconds=30)
            assert {sop for sop, _, _ in taken} == {o.sop_uid for o in new}
            series = await index.claim_masters(
                "replica-c:3:z", 10, lease_seconds=30, series=[old[0].series_uid]
            )
            assert series == [], "claimed by b"
        finally:
            await index.close()
    finally:
        await archive.close()


async def test_leases_of_a_dead_process_on_this_host_are_freed_at_start(tmp_path: Path) -> None:
    archive = Archive(settings(tmp_path))
    await archive.open(start_masters=False)
    try:
        outcomes = await ingest_copies(archive, copies(CT, 2, tmp_path), tmp_path)
        host = archive.masters.owner.split(":")[0]
        # A pid that cannot be running: past the kernel's pid_max.
        dead = f"{host}:{2**22 + 1}:dead"
        assert len(await archive.index.claim_masters(dead, 10, lease_seconds=3600)) == 2
        archive.masters.start()
        await asyncio.wait_for(archive.drain_masters(), timeout=60)
        for o in outcomes:
            assert (await archive.instances(o.study_uid, o.series_uid, o.sop_uid))[0].is_master
    finally:
        await archive.close()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory):
    """A server whose masters cannot keep up: one worker, and a wait of 0 ms before a cut is made on
    the fly."""
    server = Server(
        tmp_path_factory.mktemp("pace") / "data", {"DICOMWEB_WORKERS": "1", "DICOMWEB_MASTER_WAIT_MS": "0"}
    )
    try:
        yield server
    finally:
        server.stop()


def test_cuts_right_after_store_are_answered_and_labelled(slow_server: Server) -> None:
    """Every cut asked for right after a burst of uploads gets 200 (from the master or encoded on the
    fly), labelled .91, never 503; /layers may say 503 with Retry-After while the master is made."""
    study, series = generate_uid(), generate_uid()
    data = [
        new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study, series=series) for _ in range(12)
    ]
    with httpx.Client(base_url=slow_server.root, timeout=60) as client:
        response = stow(client, data)
        assert response.status_code == 200, response.text
        sops = [item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]]
        for sop in reversed(sops):
            url = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
            got = client.get(url, params={"layers": "1", "fsiz": "128,128"}, headers={"Accept": "image/jp2"})
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == f"image/jp2; transfer-syntax={J2K_CUT}"
            assert got.content[:2] == b"\xff\x4f"
            layers = client.get(f"/studies/{study}/series/{series}/instances/{sop}/layers")
            assert layers.status_code in (200, 503)
            if layers.status_code == 503:
                assert "retry-after" in layers.headers
        status = client.get("/status").json()
        for key in ("pending_masters", "oldest_pending_seconds", "masters_per_second", "masters_in_progress"):
            assert key in status
