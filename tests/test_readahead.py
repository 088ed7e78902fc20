"""Decode-ahead (storage/readahead.py): opening a series decodes its frames ahead of a client that wants them
uncompressed, and the frames of instances received uncompressed are kept on disk when their master is made;
what either serves is exactly what decoding on request gives."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, new_uids, stow, wait_for_masters

OCTET = {"Accept": "application/octet-stream"}
SLICES = 4


def shifted(raw: bytes, columns: int, **changes: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(new_uids(raw, **changes)))
    ds.PixelData = np.roll(ds.pixel_array, columns, axis=1).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def decoded_ahead(client: httpx.Client) -> int:
    return client.get("/status").json()["frames_decoded_ahead"]


def test_series_metadata_starts_decoding_ahead(client: httpx.Client) -> None:
    """Received as JPEG 2000 (nothing kept uncompressed): metadata starts the decoding."""
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_J2KR.dcm").read_bytes()
    files = [new_uids(raw, study=study, series=series, InstanceNumber=str(i + 1)) for i in range(SLICES)]
    assert stow(client, files).status_code == 200
    wait_for_masters(client)
    before = decoded_ahead(client)
    assert client.get(f"/studies/{study}/series/{series}/metadata").status_code == 200
    deadline = time.time() + 120
    while decoded_ahead(client) < before + SLICES and time.time() < deadline:
        time.sleep(0.1)
    assert decoded_ahead(client) >= before + SLICES
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        url = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
        r = client.get(url, headers=OCTET)
        assert r.status_code == 200
        assert r.content == ds.pixel_array.astype("<i2").tobytes()


def test_uncompressed_frame_starts_decoding_the_rest(client: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_J2KR.dcm").read_bytes()
    files = [new_uids(raw, study=study, series=series, InstanceNumber=str(i + 1)) for i in range(SLICES)]
    assert stow(client, files).status_code == 200
    wait_for_masters(client)
    sops = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
    before = decoded_ahead(client)
    first = client.get(f"/studies/{study}/series/{series}/instances/{sops[0]}/frames/1", headers=OCTET)
    assert first.status_code == 200
    deadline = time.time() + 120
    while decoded_ahead(client) < before + SLICES - 1 and time.time() < deadline:
        time.sleep(0.1)
    assert decoded_ahead(client) >= before + SLICES - 1
    # Replacing an instance gives it a new blob: its frame is never served from the earlier decode.
    uncompressed = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    replaced = shifted(uncompressed, 100, study=study, series=series, sop=sops[1], InstanceNumber="2")
    assert stow(client, [replaced]).status_code == 200
    wait_for_masters(client)
    r = client.get(f"/studies/{study}/series/{series}/instances/{sops[1]}/frames/1", headers=OCTET)
    expected = pydicom.dcmread(io.BytesIO(replaced)).pixel_array.astype("<i2").tobytes()
    assert r.status_code == 200 and r.content == expected


def test_frames_received_uncompressed_are_kept_for_their_master(client: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    files = [
        shifted(raw, 3 * i, study=study, series=series, InstanceNumber=str(i + 1)) for i in range(SLICES)
    ]
    before = client.get("/status").json()["masters_with_uncompressed_frames_kept"]
    assert stow(client, files).status_code == 200
    wait_for_masters(client)
    assert client.get("/status").json()["masters_with_uncompressed_frames_kept"] >= before + SLICES
    # Opening the series reads its kept frames into memory ahead of the client (no decode).
    status = client.get("/status").json()
    read_before, decoded_before = status["frames_read_ahead_from_disk"], status["frames_decoded_ahead"]
    assert client.get(f"/studies/{study}/series/{series}/metadata").status_code == 200
    deadline = time.time() + 30
    while client.get("/status").json()["frames_read_ahead_from_disk"] < read_before + SLICES:
        assert time.time() < deadline, "the kept frames were not read ahead"
        time.sleep(0.05)
    assert client.get("/status").json()["frames_decoded_ahead"] == decoded_before
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        url = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
        assert client.get(url + "/layers").status_code == 200  # served from the master's row
        r = client.get(url + "/frames/1", headers=OCTET)
        assert r.status_code == 200 and r.content == ds.pixel_array.astype("<i2").tobytes()
