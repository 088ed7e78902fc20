"""Decode-ahead (storage/readahead.py): opening a series decodes its frames ahead of a client that wants them
uncompressed; what it serves is exactly what decoding on request gives."""

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
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    files = [shifted(raw, 7 * i, study=study, series=series, InstanceNumber=str(i + 1)) for i in range(SLICES)]
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
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    files = [shifted(raw, 5 * i, study=study, series=series, InstanceNumber=str(i + 1)) for i in range(SLICES)]
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
    replaced = shifted(raw, 100, study=study, series=series, sop=sops[1], InstanceNumber="2")
    assert stow(client, [replaced]).status_code == 200
    wait_for_masters(client)
    r = client.get(f"/studies/{study}/series/{series}/instances/{sops[1]}/frames/1", headers=OCTET)
    expected = pydicom.dcmread(io.BytesIO(replaced)).pixel_array.astype("<i2").tobytes()
    assert r.status_code == 200 and r.content == expected
