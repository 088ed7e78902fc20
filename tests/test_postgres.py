"""The same server on PostgreSQL: a temporary cluster (Debian's postgresql binaries) on a loopback port.

The services run unchanged on either database; this suite walks the paths whose SQL differs between
SQLite and PostgreSQL: upserts, case-(in)sensitive matching, grouped counts, the master queue, deletes.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from bench import pg_cluster
from storage.api_keys import CACHE_SECONDS as API_KEY_CACHE_SECONDS
from storage.index import Index
from tests.conftest import (
    PYDICOM_DATA,
    PYDICOM_TEST_FILES,
    Server,
    new_uids,
    parse_multipart,
    stow,
    wait_for_masters,
)
from tests.index_helpers import make_instance, new_postgres_database, stored
from tests.test_cli import run


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if pg_cluster.bin_dir() is None:
        pytest.fail(
            "PostgreSQL server binaries are missing: run `apt-get install postgresql` (scripts/test.sh does)"
        )
    with pg_cluster.running() as url:
        yield url


@pytest.fixture(scope="module")
def pg_client(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    srv = Server(tmp_path_factory.mktemp("pgserver") / "data", {"DICOMWEB_DATABASE_URL": postgres})
    with httpx.Client(base_url=srv.root, timeout=60) as client:
        yield client
    srv.stop()


def test_store_search_retrieve_delete(pg_client: httpx.Client) -> None:
    study, ct_series = generate_uid(), generate_uid()
    ct = [
        new_uids(
            (PYDICOM_DATA / "693_UNCR.dcm").read_bytes(),
            study=study,
            series=ct_series,
            PatientName="Doe^John",
            PatientID="PG-1",
            StudyDate="20200615",
            InstanceNumber=str(i),
        )
        for i in range(3)
    ]
    mr = new_uids(
        (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes(),
        study=study,
        PatientName="Doe^John",
        PatientID="PG-1",
        StudyDate="20200615",
    )
    r = stow(pg_client, [*ct, mr], study=study)
    assert r.status_code == 200, r.text
    assert stow(pg_client, [ct[0]]).status_code == 200  # the same instance again: one copy

    def studies(**params: str) -> list[dict]:
        r = pg_client.get("/studies", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    (found,) = studies(PatientName="doe*", PatientID="PG-1")
    assert found["00201208"]["Value"] == [4] and found["00201206"]["Value"] == [2]
    assert sorted(found["00080061"]["Value"]) == ["CT", "MR"]
    assert studies(PatientName="joh", fuzzymatching="true", PatientID="PG-1")
    assert not studies(PatientID="pg-1")  # case-sensitive outside person names
    assert studies(StudyDate="20200101-20201231", PatientID="PG-1")
    assert studies(ModalitiesInStudy="MR", PatientID="PG-1")
    assert studies(PatientID="PG_1") == []  # SQL wildcards are literal
    r = pg_client.get(f"/studies/{study}/instances", params={"limit": "2"})
    assert len(r.json()) == 2 and "There are 2 additional results" in r.headers["warning"]

    wait_for_masters(pg_client)
    ds = pydicom.dcmread(io.BytesIO(ct[1]))
    url = f"/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert pg_client.get(url + "/layers").status_code == 200
    parts = parse_multipart(pg_client.get(url))
    assert np.array_equal(pydicom.dcmread(io.BytesIO(parts[0][1])).pixel_array, ds.pixel_array)
    meta = pg_client.get(f"/studies/{study}/series/{ds.SeriesInstanceUID}/metadata").json()
    assert len(meta) == 3

    assert pg_client.delete(url).status_code == 204
    assert pg_client.get(url + "/metadata").status_code == 404
    assert studies(PatientID="PG-1")[0]["00201208"]["Value"] == [3]
    assert pg_client.delete(f"/studies/{study}").status_code == 204
    assert studies(PatientID="PG-1") == []


def test_database_lost_and_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    """PostgreSQL stops under a running server: requests get 503 with Retry-After within the connect
    timeout, never a hang or a 500; once it is back, the same server answers again."""
    base = Path(tempfile.mkdtemp(prefix="dicomweb-pg-lost-"))
    url = pg_cluster.start(base, pg_cluster.free_port())
    srv = Server(
        tmp_path_factory.mktemp("pglost") / "data",
        {
            "DICOMWEB_DATABASE_URL": url,
            "DICOMWEB_DB_CONNECT_TIMEOUT": "2",
            "DICOMWEB_DB_STATEMENT_TIMEOUT": "5",
        },
    )
    try:
        with httpx.Client(base_url=srv.root, timeout=30) as client:
            data = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
            assert stow(client, [data]).status_code == 200
            assert client.get("/studies").status_code == 200
            pg_cluster.stop(base)
            for _ in range(3):
                lost = client.get("/studies")
                assert lost.status_code == 503, lost.text
                assert "retry-after" in lost.headers and "cannot be reached" in lost.json()["error"]
            pg_cluster.resume(base)
            back = client.get("/studies")
            assert back.status_code == 200 and len(back.json()) == 1

            # With API keys on, the key is looked up before routing, outside the app's error handlers:
            # a lost database there is a 503 too, not a 500.
            made = run("apikey", "create", "viewer", "--scopes", "read", env={"DICOMWEB_DATABASE_URL": url})
            assert made.returncode == 0, made.stderr
            key = {"Authorization": f"Bearer {made.stdout.splitlines()[0]}"}
            assert client.get("/studies", headers=key).status_code == 200
            pg_cluster.stop(base)
            time.sleep(API_KEY_CACHE_SECONDS + 0.5)  # past the cached lookups, so the key is looked up again
            lost = client.get("/studies", headers=key)
            assert lost.status_code == 503, lost.text
            assert "retry-after" in lost.headers and "cannot be reached" in lost.json()["error"]
            pg_cluster.resume(base)
            assert client.get("/studies", headers=key).status_code == 200
    finally:
        srv.stop()
        pg_cluster.stop(base)
        shutil.rmtree(base, ignore_errors=True)


async def test_two_replicas_storing_one_new_study_trash_the_blob_they_replace(
    postgres: str,
    tmp_path: Path,
) -> None:
    """Two replicas store the same instance of a study neither has seen, at the same moment: whichever
    commits second replaces the first's row, and must see it to put the first's blob in the trash (a
    study row lock cannot serialize them: there is no row yet). Repeated, so the two transactions do
    interleave."""
    url = await new_postgres_database(postgres)
    replicas = [Index(url), Index(url)]
    for index in replicas:
        await index.create()
    try:
        for _ in range(25):
            study, series, sop = generate_uid(), generate_uid(), generate_uid()
            copies = [
                stored([make_instance(tmp_path, study=study, series=series, sop=sop)]) for _ in replicas
            ]
            results = await asyncio.gather(*(i.store(c) for i, c in zip(replicas, copies, strict=True)))
            [rec] = await replicas[0].instances(study, series, sop)
            written = {c[0][1] for c in copies}
            trashed = {key for stale, _ in results for key in stale}
            assert trashed == written - {rec.blob_key}
            assert sorted(await replicas[0].trash(limit=10)) == sorted(trashed)
            await replicas[0].untrash(list(trashed))
    finally:
        for index in replicas:
            await index.close()
