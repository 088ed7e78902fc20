"""The audit log of a real server: one JSON line per request touching patient data, with PS3.15 A.5 EventIDs,
patient-identifying search values masked, flushed within a second, reopened on SIGHUP."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_TEST_FILES, Server, new_uids, stow


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    data = tmp_path_factory.mktemp("audit") / "data"
    path = data.parent / "audit" / "audit.jsonl"
    srv = Server(data, {"DICOMWEB_AUDIT_LOG": str(path)})
    yield srv, path
    srv.stop()


def lines(path: Path, n: int, timeout: float = 5) -> list[dict]:
    """The last n lines, waiting for them (flushed at least every second)."""
    deadline = time.time() + timeout
    while True:
        found = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if len(found) >= n or time.time() > deadline:
            assert len(found) >= n, found
            return found[-n:]
        time.sleep(0.1)


def test_store_search_retrieve_delete(audited: tuple[Server, Path]) -> None:
    srv, path = audited
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    patient = str(pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm").PatientName)
    with httpx.Client(base_url=srv.root, timeout=60) as client:
        before = len(path.read_text().splitlines()) if path.exists() else 0
        r = stow(client, [new_uids(raw, study=study, series=series)])
        assert r.status_code == 200
        assert (
            client.get(
                "/studies", params={"PatientName": patient, "Modality": "CT", "limit": "5"}
            ).status_code
            == 200
        )
        r = client.get(f"/studies/{study}/series/{series}/metadata")
        assert r.status_code == 200
        retrieved = client.get(
            f"/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        assert retrieved.status_code == 200
        assert client.delete(f"/studies/{study}").status_code == 204
        assert client.get(f"/studies/{study}/metadata").status_code == 404
        assert client.get("/status").status_code == 200  # no patient data: not audited
    store, search, meta, retrieve, delete, missing = lines(path, before + 6)[before:]
    assert store["action"] == "store" and store["event_id"] == {
        "code": "110104",
        "scheme": "DCM",
        "meaning": "DICOM Instances Transferred",
    }
    assert store["event_action"] == "C" and store["studies"] == [study] and store["series"] == [series]
    assert store["bytes_in"] > len(raw) and store["status"] == 200 and store["outcome"] == 0
    assert store["who"] == "anonymous" and store["client"] == "127.0.0.1"
    assert (
        search["action"] == "search"
        and search["event_id"]["code"] == "110112"
        and search["event_action"] == "E"
    )
    assert search["query"] == {"PatientName": "***", "Modality": "CT", "limit": "5"}
    assert (
        meta["action"] == "retrieve" and meta["event_id"]["code"] == "110104" and meta["event_action"] == "R"
    )
    assert meta["studies"] == [study] and meta["series"] == [series]
    assert retrieve["bytes_out"] == len(retrieved.content)
    assert delete["event_id"] == {"code": "110105", "scheme": "DCM", "meaning": "DICOM Study Deleted"}
    assert delete["event_action"] == "D" and delete["status"] == 204
    assert missing["status"] == 404 and missing["outcome"] == 4
    for line in (store, search, meta, retrieve, delete):
        assert line["time"].endswith("Z")
    text = path.read_text()
    assert patient not in text and patient.split("^")[0] not in text


def test_reopened_on_sighup(audited: tuple[Server, Path]) -> None:
    srv, path = audited
    httpx.get(f"{srv.root}/studies")
    lines(path, 1)
    rotated = path.with_suffix(".1")
    path.rename(rotated)
    srv.proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)  # the flusher thread reopens within a second
    assert httpx.get(f"{srv.root}/series").status_code == 200
    (line,) = lines(path, 1)
    assert line["path"] == "/dicom-web/series"
    assert srv.proc.poll() is None
