"""Bulk data in metadata (PS3.18 10.4.3.3.2) and the bulkdata resource (PS3.18 8.7.3.3.1), against the real
server.

Attributes that are bulk data by nature (palette lookup tables, LUT Data, overlays, waveforms, encapsulated
documents, spectroscopy data, float pixel data) are always BulkDataURIs, whatever their size: OHIF's client
and dcm4chee expect palettes that way. Other binary values are inline up to DICOMWEB_BULKDATA_THRESHOLD bytes.
Every URI returns the value as uncompressed Little Endian bytes, computed here from pydicom's reading of the
uploaded file.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import PYDICOM_TEST_FILES, Server, new_uids, stow
from tests.samples import sample

OCTET = "application/octet-stream"
CT_SMALL = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
# Little endian dtypes of the VRs whose bytes have an order.
WORDS = {
    "OW": "u2",
    "US": "u2",
    "SS": "i2",
    "OF": "f4",
    "FL": "f4",
    "OL": "u4",
    "UL": "u4",
    "SL": "i4",
    "OD": "f8",
    "FD": "f8",
}


def data_file(name: str) -> bytes:
    return sample(name).read_bytes()


def save(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def base_dataset(**attrs: Any) -> Dataset:
    """A small Secondary Capture header with fresh UIDs and no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BULK", "OT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def encapsulated_pdf() -> bytes:
    ds = base_dataset(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.104.1",
        Modality="DOC",
        MIMETypeOfEncapsulatedDocument="application/pdf",
    )
    ds.EncapsulatedDocument = b"%PDF-1.4\n% a tiny document\n%%EOF\n"
    return save(ds)


def float_pixels(keyword: str, dtype: str) -> bytes:
    """Float (OF) or double float (OD) pixel data, 4x3, 32 or 64 bits."""
    ds = base_dataset(
        Rows=3,
        Columns=4,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=np.dtype(dtype).itemsize * 8,
    )
    setattr(ds, keyword, np.linspace(-1.5, 2.25, 12, dtype=dtype).tobytes())
    return save(ds)


def spectroscopy() -> bytes:
    ds = base_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.4.2", Modality="MR")
    ds.SpectroscopyData = np.arange(16, dtype="<f4").tobytes()
    return save(ds)


# (source, tag paths that must be BulkDataURIs whatever their size)
CASES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "palette": (data_file("OBXXXX1A.dcm"), ("00281201", "00281202", "00281203")),
    "palette big endian": (data_file("OBXXXX1A_expb.dcm"), ("00281201", "00281202", "00281203")),
    "segmented palette": (data_file("gdcm-US-ALOKA-16.dcm"), ("00281221", "00281222", "00281223")),
    "modality LUT data": (data_file("mlut_18.dcm"), ("00283000/0/00283006",)),
    "VOI LUT data": (data_file("vlut_04.dcm"), ("00283010/0/00283006",)),
    "overlay": (data_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), ("60003000",)),
    "waveform": (data_file("waveform_ecg.dcm"), ("54000100/0/54001010", "54000100/1/54001010")),
    "encapsulated document": (encapsulated_pdf(), ("00420011",)),
    "spectroscopy": (spectroscopy(), ("56000020",)),
    "float pixel data": (float_pixels("FloatPixelData", "<f4"), ("7FE00008",)),
    "double float pixel data": (float_pixels("DoubleFloatPixelData", "<f8"), ("7FE00009",)),
}


def element(ds: Dataset, tag_path: str) -> pydicom.DataElement:
    parts = tag_path.split("/")
    node = ds
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        node = node[int(tag, 16)].value[int(index)]
    return node[int(parts[-1], 16)]


def little_endian(ds: Dataset, elem: pydicom.DataElement) -> bytes:
    """The value as bulk data is sent: uncompressed, Little Endian (PS3.18 8.7.3.3.1)."""
    vr = elem.VR.split(" or ")[-1]
    value = elem.value
    if isinstance(value, bytes):
        if ds.original_encoding[1] is False and vr in WORDS:
            return np.frombuffer(value, ">" + WORDS[vr]).astype("<" + WORDS[vr]).tobytes()
        return value
    values = list(value) if isinstance(value, pydicom.multival.MultiValue | list) else [value]
    return np.asarray(values, dtype="<" + WORDS[vr]).tobytes()


def metadata(client: httpx.Client, ds: Dataset) -> dict[str, Any]:
    url = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
    )
    response = client.get(url)
    assert response.status_code == 200, response.text
    [item] = response.json()
    return item


def json_element(item: dict[str, Any], tag_path: str) -> dict[str, Any]:
    parts = tag_path.split("/")
    node = item
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        node = node[tag]["Value"][int(index)]
    return node[parts[-1]]


def store(client: httpx.Client, data: bytes) -> Dataset:
    data = new_uids(data)
    response = stow(client, [data])
    assert response.status_code == 200, response.text
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("case", list(CASES))
def test_bulk_data_by_nature_is_always_a_uri_that_returns_the_value(client: httpx.Client, case: str) -> None:
    source, paths = CASES[case]
    ds = store(client, source)
    item = metadata(client, ds)
    for path in paths:
        original = element(ds, path)
        assert original.value, path
        got = json_element(item, path)
        assert set(got) == {"vr", "BulkDataURI"}, (path, got)
        assert got["vr"] == original.VR.split(" or ")[-1] or original.VR == "US or OW", (path, got)
        response = client.get(got["BulkDataURI"], headers={"Accept": OCTET})
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith(OCTET)
        assert response.content == little_endian(ds, original), path
        # Also as multipart, the default.
        assert client.get(got["BulkDataURI"]).status_code == 200


def test_palette_lookup_tables_are_small_and_still_uris(client: httpx.Client) -> None:
    """A 256-entry palette is 512 bytes, under the 1024-byte threshold: bulk data by nature all the same."""
    ds = store(client, data_file("OBXXXX1A.dcm"))
    assert len(ds.RedPaletteColorLookupTableData) <= 1024
    assert "BulkDataURI" in metadata(client, ds)["00281201"]


def with_private_binaries(*sizes: int) -> bytes:
    """CT_small with private OB values (0099,1001...) of the given sizes."""
    ds = pydicom.dcmread(io.BytesIO(new_uids(CT_SMALL)))
    ds.add_new(0x00990010, "LO", "CONFORMANCE TEST")
    for i, size in enumerate(sizes, start=1):
        ds.add_new(0x00991000 + i, "OB", bytes(range(256)) * (size // 256) + bytes(size % 256))
    return save(ds)


def assert_thresholded(client: httpx.Client, threshold: int) -> None:
    ds = store(client, with_private_binaries(threshold, threshold + 1, 2))
    item = metadata(client, ds)
    inline, bulk, tiny = item["00991001"], item["00991002"], item["00991003"]
    assert "InlineBinary" in inline and "BulkDataURI" not in inline, inline
    assert "InlineBinary" in tiny
    assert set(bulk) == {"vr", "BulkDataURI"}, bulk
    response = client.get(bulk["BulkDataURI"], headers={"Accept": OCTET})
    assert response.status_code == 200, response.text
    assert response.content == ds[0x00991002].value


def test_other_binary_values_are_inline_up_to_1024_bytes(client: httpx.Client) -> None:
    assert_thresholded(client, 1024)


@pytest.fixture(scope="module")
def small_threshold_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = Server(tmp_path_factory.mktemp("bulk") / "data", {"DICOMWEB_BULKDATA_THRESHOLD": "100"})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            yield client
    finally:
        server.stop()


def test_threshold_from_the_environment(small_threshold_client: httpx.Client) -> None:
    assert_thresholded(small_threshold_client, 100)


@pytest.mark.parametrize("case", ["palette", "modality LUT data"])
def test_bulk_data_by_nature_whatever_the_threshold(tmp_path: Path, case: str) -> None:
    server = Server(tmp_path / "data", {"DICOMWEB_BULKDATA_THRESHOLD": str(1 << 30)})
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            source, paths = CASES[case]
            ds = store(client, source)
            item = metadata(client, ds)
            for path in paths:
                assert "BulkDataURI" in json_element(item, path), path
            # And nothing else is: pixel data aside, every other binary value is inline.
            others = [k for k, v in item.items() if "BulkDataURI" in v and k not in paths and k != "7FE00010"]
            assert not others
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["00281201/0/00283006", "00100010", "7FE00008", "00283000/7/00283006"])
def test_bulk_data_that_is_not_there_is_404(client: httpx.Client, path: str) -> None:
    ds = store(client, data_file("OBXXXX1A.dcm"))
    base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = client.get(f"{base}/bulkdata/{path}", headers={"Accept": OCTET})
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("OBXXXX1A_expb.dcm", "00281201"),
        ("OBXXXX1A.dcm", "00281203"),
        ("mlut_18.dcm", "00283000/0/00283006"),
        ("gdcm-US-ALOKA-16_big.dcm", "00281221"),
        ("waveform_ecg.dcm", "54000100/1/54001010"),
    ],
)
def test_bulk_values_are_little_endian_whatever_the_file(name: str, path: str) -> None:
    """A big endian file (kept as received, or before its master) gives the same bytes as a little endian
    one: PS3.18 8.7.3.3.1 sends uncompressed bulk data in Little Endian byte order."""
    from storage.dicom_json import bulk_value

    ds = pydicom.dcmread(sample(name))
    assert bulk_value(sample(name), path) == little_endian(ds, element(ds, path))


@pytest.mark.parametrize(
    ("big", "little", "path"),
    [
        ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm", "00281201"),
        ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm", "00281222"),
    ],
)
def test_big_and_little_endian_copies_give_the_same_bulk_data(big: str, little: str, path: str) -> None:
    from storage.dicom_json import bulk_value

    assert pydicom.dcmread(sample(big)).original_encoding[1] is False
    assert (
        bulk_value(sample(big), path)
        == bulk_value(sample(little), path)
        == element(pydicom.dcmread(sample(little)), path).value
    )


def test_threshold_kept_when_the_master_rewrites_the_metadata(small_threshold_client: httpx.Client) -> None:
    """The master queue rewrites each instance's metadata with its master: with the configured
    threshold, not the default (values of 101 to 1024 bytes stay bulk data)."""
    ds = store(small_threshold_client, with_private_binaries(100, 101, 2))
    layers = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/layers"
    )
    deadline = time.monotonic() + 60
    while (status := small_threshold_client.get(layers).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200, "the master was made"
    item = metadata(small_threshold_client, ds)
    assert "InlineBinary" in item["00991001"] and "InlineBinary" in item["00991003"]
    assert set(item["00991002"]) == {"vr", "BulkDataURI"}, item["00991002"]
