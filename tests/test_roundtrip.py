"""Every image pydicom can read, from its own test files and pydicom-data, goes through STOW-RS and
comes back through WADO-RS bit-exact: identical pixel values and attributes, as Explicit VR Little
Endian and as stored, and identical frames. Images that can be held losslessly come back (as stored)
as layered JPEG 2000 masters; everything else as the very bytes that were sent."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage.uids import is_valid_uid
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, parse_multipart, stow

STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
# Attributes that decoding legitimately changes (PS3.5 8.2: decompressed data is RGB, interleaved).
CHANGED_BY_DECODING = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration"}


# Every file of the corpus the server refuses, with (part of) the reason it gives. Any other refusal
# fails the test, so a regression that starts refusing valid files cannot hide as a skip.
EXPECTED_REFUSALS: dict[str, str] = {
    # pydicom's fragments and test snippets: no Study, Series or SOP Instance UID, or a malformed one.
    **{
        name: "missing StudyInstanceUID"
        for name in (
            "JPEGLSNearLossless_08.dcm",
            "JPEGLSNearLossless_16.dcm",
            "SC_rgb_jls_lossy_line.dcm",
            "SC_rgb_jls_lossy_sample.dcm",
            "UN_sequence.dcm",
            "empty_charset_LEI.dcm",
            "meta_missing_tsyntax.dcm",
            "nested_priv_SQ.dcm",
            "no_meta_group_length.dcm",
            "priv_SQ.dcm",
            "emri_small_jpeg_2k_lossless_too_short.dcm",
        )
    },
    "bad_sequence.dcm": "malformed StudyInstanceUID",
    "no_meta.dcm": "no DICM prefix and no SOP Instance UID",
    # Damaged on purpose: pixel data longer than the file, an IS value that is no number.
    "MR_truncated.dcm": "truncated file: pixel data runs past the end of the file",
    "badVR.dcm": "unreadable dataset: ValueError: invalid literal",
}


def corpus() -> list[Path]:
    return sorted(PYDICOM_TEST_FILES.glob("*.dcm")) + sorted(PYDICOM_DATA.glob("*.dcm"))


def read(path_or_bytes, *, force: bool = False) -> pydicom.Dataset | None:
    """The dataset, or None when pydicom cannot read it. With `force`, files without a Part 10 header
    are read too, and given the transfer syntax pydicom found, so their pixels can be decoded."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(src, force=force)
        except Exception:  # noqa: BLE001 - "pydicom can read it" is the criterion
            return None
    if force and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRBigEndian
            if not ds.is_little_endian
            else ImplicitVRLittleEndian
            if ds.is_implicit_VR
            else ExplicitVRLittleEndian
        )
    return ds


def has_part10_header(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def storable(ds: pydicom.Dataset) -> bool:
    try:
        uids = [
            str(ds.get(k, ""))
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        ]
    except Exception:  # noqa: BLE001
        return False
    return all(u and is_valid_uid(u) for u in uids)


def pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ds.pixel_array
        except Exception:  # noqa: BLE001 - no pixel data, or no decoder for it
            return None


def instance_url(ds: pydicom.Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def wait_for_master(client: httpx.Client, url: str) -> bool:
    """True once the instance's master is ready, False if it is kept as received."""
    deadline = time.time() + 120
    while time.time() < deadline:
        r = client.get(url + "/layers")
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        assert r.status_code == 503, r.text
        time.sleep(0.1)
    raise AssertionError("master still pending after 120 s")


def same_attributes(original: pydicom.Dataset, back: pydicom.Dataset) -> None:
    for elem in original:
        # Group lengths (gggg,0000) are retired and recomputed by writers.
        if elem.keyword in CHANGED_BY_DECODING or elem.tag.group == 0x0002 or elem.tag.element == 0:
            continue
        assert elem.tag in back, f"{elem.keyword or elem.tag} lost"
        assert same_value(original, elem, back[elem.tag].value), f"{elem.keyword or elem.tag} changed"


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_round_trip(client: httpx.Client, path: Path) -> None:
    data = path.read_bytes()
    # Files without a Part 10 header are stored (with one added); pydicom reads them only with force.
    original = read(path, force=not has_part10_header(data))
    r = stow(client, [data])
    expected = EXPECTED_REFUSALS.get(path.name)
    if expected is not None:
        # Refused with the pinned reason, and nothing stored. A new refusal fails below instead.
        assert r.status_code == 409, f"{path.name} was expected to be refused ({expected}): {r.text}"
        reason = r.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
        assert expected in reason, reason
        if original is not None and storable(original):
            assert client.get(instance_url(original) + "/metadata").status_code == 404
        return
    assert original is not None, "pydicom cannot read this file, yet the server stored it"
    assert r.status_code == 200, f"refused: {r.text}"
    url = instance_url(original)
    try:
        is_master = wait_for_master(client, url)
        # As stored: a master (same pixels, same attributes) or the very bytes that were sent.
        parts = parse_multipart(client.get(url, headers=STORED))
        assert len(parts) == 1
        if is_master:
            assert "transfer-syntax=1.2.840.10008.1.2.4.90" in parts[0][0]["content-type"]
            master = read(parts[0][1])
            assert master.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
            same_attributes(original, master)
            assert np.array_equal(pixels(master), pixels(original)), "master pixels differ"
        elif has_part10_header(data):
            why = client.get(url + "/layers").text
            assert parts[0][1] == data, f"{parts[0][0]} {why}"
        else:
            # The dataset's bytes as sent, after the preamble and File Meta Information added at ingest.
            assert has_part10_header(parts[0][1]) and parts[0][1].endswith(data)
            assert read(parts[0][1]) is not None
        # Default (Explicit VR Little Endian), decoded from whatever was stored.
        r = client.get(url)
        if original.get("PixelData") is not None and pixels(original) is None:
            assert r.status_code in (200, 406)
            return
        assert r.status_code == 200, r.text
        headers, body = parse_multipart(r)[0]
        assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
        back = read(body)
        assert back is not None
        assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        same_attributes(original, back)
        before = pixels(original)
        if before is not None:
            after = pixels(back)
            assert after is not None and np.array_equal(before, after), "pixel values changed"
            check_first_frame(client, url, original, before, is_master)
    finally:
        client.delete(url)


SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def same_value(original: pydicom.Dataset, elem, value) -> bool:
    """Equal values; binary values of a big-endian original come back little endian."""
    if not original.is_little_endian and isinstance(elem.value, bytes) and elem.VR in SWAP:
        width = SWAP[elem.VR]
        n = len(elem.value) - len(elem.value) % width
        swapped = np.frombuffer(elem.value[:n], f">u{width}").astype(f"<u{width}").tobytes()
        return value == swapped + elem.value[n:]
    return value == elem.value


def check_first_frame(
    client: httpx.Client, url: str, original: pydicom.Dataset, array: np.ndarray, is_master: bool
) -> None:
    if int(original.get("BitsAllocated", 8)) == 1:
        return
    r = client.get(url + "/frames/1")
    assert r.status_code == 200, r.text
    ((headers, body),) = parse_multipart(r)
    assert headers["content-type"].startswith("application/octet-stream")
    if original.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1") and not is_master:
        # Native little endian: the frame is exactly the stored bytes (no masking, no conversion).
        assert body == original.PixelData[: len(body)]
        assert (
            len(body) == array[0].nbytes if int(original.get("NumberOfFrames", 1) or 1) > 1 else array.nbytes
        )
    elif original.get("PhotometricInterpretation", "") in ("RGB", "MONOCHROME1", "MONOCHROME2"):
        frames = int(original.get("NumberOfFrames", 1) or 1)
        first = array[0] if frames > 1 else array
        if original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2" and not is_master:
            if int(original.get("PlanarConfiguration", 0) or 0) == 1:
                first = np.moveaxis(first, -1, 0)
            unsigned = np.dtype(f"<u{first.dtype.itemsize}")
            raw = np.frombuffer(body, dtype=unsigned).reshape(first.shape)
            mask = (1 << int(original.BitsStored)) - 1
            ours = np.ascontiguousarray(first).astype(first.dtype.newbyteorder("<")).view(unsigned)
            assert np.array_equal(raw & mask, ours & mask), "frame values differ"
        else:
            assert body == np.ascontiguousarray(first).astype(first.dtype.newbyteorder("<")).tobytes()
