"""Series metadata from its ready compressed body (storage/metadata_cache.py): the same JSON as built from the
rows, and never stale after a store, a replacement, a master or a delete, whichever server process made it."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, Server, new_uids, stow, wait_for_masters

GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def replica(server: Server) -> Iterator[httpx.Client]:
    """A second server process on the same data folder and index, as a replica would be."""
    other = Server(server.data_dir)
    with httpx.Client(base_url=other.root, timeout=60) as c:
        yield c
    other.stop()


def sops_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(i["00080018"]["Value"][0] for i in response.json())


def test_ready_body_follows_every_change(client: httpx.Client, replica: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    url = f"/studies/{study}/series/{series}/metadata"
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    files = [new_uids(raw, study=study, series=series, InstanceNumber=str(i)) for i in (1, 2)]
    sops = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
    assert stow(client, files[:1]).status_code == 200
    ready = client.get(url, headers=GZIP)
    assert ready.headers["content-encoding"] == "gzip"
    assert ready.json() == client.get(url, headers=PLAIN).json()  # the same JSON either way
    assert client.get(url, headers=GZIP).content == ready.content
    # Stored through the other process: this one's ready body is stale and must not be sent.
    assert stow(replica, files[1:]).status_code == 200
    assert sops_of(client.get(url, headers=GZIP)) == sorted(sops)
    # The master replaces the received file (a new transfer syntax in the metadata).
    wait_for_masters(client)
    ts = {i["00020010"]["Value"][0] for i in client.get(url, headers=GZIP).json() if "00020010" in i}
    plain_ts = {i["00020010"]["Value"][0] for i in client.get(url, headers=PLAIN).json() if "00020010" in i}
    assert ts == plain_ts
    # Replaced with other attributes, through the other process.
    changed = new_uids(
        raw, study=study, series=series, sop=sops[0], InstanceNumber="1", SeriesDescription="changed"
    )
    assert stow(replica, [changed]).status_code == 200
    body = client.get(url, headers=GZIP).json()
    assert {i["0008103E"]["Value"][0] for i in body if i["00080018"]["Value"][0] == sops[0]} == {"changed"}
    # Deleted through the other process.
    assert replica.delete(f"/studies/{study}/series/{series}/instances/{sops[1]}").status_code == 204
    assert sops_of(client.get(url, headers=GZIP)) == [sops[0]]
    assert replica.delete(f"/studies/{study}/series/{series}").status_code == 204
    assert client.get(url, headers=GZIP).status_code == 404


def test_bulk_data_uris_name_the_server_asked(client: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    assert stow(client, [new_uids(raw, study=study, series=series)]).status_code == 200
    url = f"/studies/{study}/series/{series}/metadata"
    for host in ("a.example", "b.example"):
        body = client.get(url, headers={**GZIP, "Host": host})
        assert body.headers["content-encoding"] == "gzip"
        assert f"http://{host}/dicom-web/studies/{study}" in body.text  # httpx decompressed it
