"""WADO-RS (PS3.18 10.4) protocol edges with httpx, and interoperability with dicomweb-client.

The server is shared with other test modules, so every test stores its own instances with fresh UIDs
and only ever addresses those.
"""

from __future__ import annotations

import io
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, new_uids, parse_multipart, stow

CT_SMALL = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
MR_SMALL = (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes()
JPEG_LOSSY = (PYDICOM_TEST_FILES / "JPEG-lossy.dcm").read_bytes()
J2K_CT = (PYDICOM_DATA / "693_J2KR.dcm").read_bytes()
EMRI = (PYDICOM_DATA / "emri_small.dcm").read_bytes()
EMRI_J2K = (PYDICOM_DATA / "emri_small_jpeg_2k_lossless.dcm").read_bytes()
# Parametrized tests name their source file (bytes would make enormous test ids).
SOURCES = {
    "CT_small": CT_SMALL,
    "MR_small": MR_SMALL,
    "JPEG-lossy": JPEG_LOSSY,
    "693_J2KR": J2K_CT,
    "emri_small": EMRI,
    "emri_small_j2k": EMRI_J2K,
}

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
DICOM = "application/dicom"
OCTET = "application/octet-stream"
DICOM_JSON = "application/dicom+json"

ACCEPT_DICOM = f'multipart/related; type="{DICOM}"'
ACCEPT_DICOM_AS_STORED = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
ACCEPT_FRAMES_AS_STORED = f'multipart/related; type="{OCTET}"; transfer-syntax=*'


# ---- helpers -----------------------------------------------------------------------------------------


@dataclass
class Stored:
    """An instance the test uploaded: the exact bytes sent and where it lives."""

    data: bytes

    @property
    def ds(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))

    @property
    def study(self) -> str:
        return self.ds.StudyInstanceUID

    @property
    def series(self) -> str:
        return self.ds.SeriesInstanceUID

    @property
    def sop(self) -> str:
        return self.ds.SOPInstanceUID

    @property
    def study_url(self) -> str:
        return f"/studies/{self.study}"

    @property
    def series_url(self) -> str:
        return f"{self.study_url}/series/{self.series}"

    @property
    def url(self) -> str:
        return f"{self.series_url}/instances/{self.sop}"


def upload(client: httpx.Client, *files: bytes) -> list[Stored]:
    response = stow(client, list(files))
    assert response.status_code == 200, response.text
    return [Stored(f) for f in files]


def store_one(client: httpx.Client, source: bytes, **changes: str) -> Stored:
    return upload(client, new_uids(source, **changes))[0]


def get(client: httpx.Client, url: str, accept: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    return client.get(url, headers=headers, **kwargs)


def get_without_accept(client: httpx.Client, url: str) -> httpx.Response:
    request = client.build_request("GET", url)
    del request.headers["Accept"]
    return client.send(request)


def media_params(content_type: str) -> tuple[str, dict[str, str]]:
    """('type/subtype', {param: value}) with quotes removed; the media type lower-cased."""
    media, *params = (p.strip() for p in content_type.split(";"))
    out = {}
    for param in params:
        name, _, val = param.partition("=")
        out[name.strip().lower()] = val.strip().strip('"')
    return media.lower(), out


def dicom_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(transfer syntax, body) of each part of a multipart/related application/dicom response."""
    assert response.status_code == 200, response.text
    media, params = media_params(response.headers["content-type"])
    assert media == "multipart/related"
    assert params["type"] == DICOM
    out = []
    for headers, body in parse_multipart(response):
        part_media, part_params = media_params(headers["content-type"])
        assert part_media == DICOM
        assert "transfer-syntax" in part_params, headers
        out.append((part_params["transfer-syntax"], body))
    return out


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def native_frames(source: bytes) -> list[bytes]:
    """Each frame of an uncompressed little-endian instance, as stored."""
    ds = read(source)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    size = len(ds.PixelData) // n
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]


def decoded_frames(source: bytes) -> list[bytes]:
    """Each frame of any instance, decoded to little-endian bytes."""
    ds = read(source)
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1:
        arr = arr[np.newaxis]
    return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in arr]


def codestreams(source: bytes) -> list[bytes]:
    """Each frame's codestream as sent: ending at its EOC/EOI marker, without the fragment's pad byte."""
    ds = read(source)
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    return [f[:-1] if f.endswith(b"\xff\xd9\x00") else f for f in frames]


def unknown_urls(inst: Stored) -> list[str]:
    """A study, series and instance that do not exist, each beside or above the stored instance."""
    unknown = generate_uid()
    return [
        f"/studies/{unknown}",
        f"{inst.study_url}/series/{unknown}",
        f"{inst.series_url}/instances/{unknown}",
        f"/studies/{unknown}/series/{inst.series}/instances/{inst.sop}",
    ]


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]


def assert_content_length_matches(response: httpx.Response) -> None:
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)


@dataclass
class StudyOfThree:
    study: str
    ct: list[Stored]
    mr: Stored


def store_study_of_three(client: httpx.Client) -> StudyOfThree:
    """A CT series of two instances and an MR series of one, in one study."""
    study, ct_series = generate_uid(), generate_uid()
    stored = upload(
        client,
        new_uids(CT_SMALL, study=study, series=ct_series, InstanceNumber="1"),
        new_uids(CT_SMALL, study=study, series=ct_series, InstanceNumber="2"),
        new_uids(MR_SMALL, study=study),
    )
    return StudyOfThree(study, stored[:2], stored[2])


# ---- instance, series and study retrieval --------------------------------------------------------------


def test_retrieve_instance_default(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    response = client.get(inst.url)
    [(ts, body)] = dicom_parts(response)
    assert ts == EXPLICIT_LE
    got = read(body)
    assert got.SOPInstanceUID == inst.sop
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, inst.ds.pixel_array)


def test_retrieve_series(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    parts = dicom_parts(client.get(st.ct[0].series_url, headers={"Accept": ACCEPT_DICOM}))
    assert {read(body).SOPInstanceUID for _, body in parts} == {i.sop for i in st.ct}


def test_retrieve_study(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    parts = dicom_parts(client.get(f"/studies/{st.study}", headers={"Accept": ACCEPT_DICOM}))
    assert {read(body).SOPInstanceUID for _, body in parts} == {i.sop for i in [*st.ct, st.mr]}
    assert all(ts == EXPLICIT_LE for ts, _ in parts)


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_transfer_syntax_star_returns_uploaded_bytes(client: httpx.Client, level: str) -> None:
    inst = store_one(client, J2K_CT)
    url = {"study": inst.study_url, "series": inst.series_url, "instance": inst.url}[level]
    response = get(client, url, ACCEPT_DICOM_AS_STORED)
    [(ts, body)] = dicom_parts(response)
    assert ts == J2K_LOSSLESS
    assert body == inst.data


def test_transfer_syntax_star_on_uncompressed_returns_uploaded_bytes(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    [(ts, body)] = dicom_parts(get(client, inst.url, ACCEPT_DICOM_AS_STORED))
    assert ts == EXPLICIT_LE
    assert body == inst.data


def test_default_decodes_jpeg2000_to_explicit_little_endian(client: httpx.Client) -> None:
    inst = store_one(client, J2K_CT)
    [(ts, body)] = dicom_parts(client.get(inst.url))
    assert ts == EXPLICIT_LE
    got = read(body)
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == inst.sop
    assert np.array_equal(got.pixel_array, inst.ds.pixel_array)


def test_implicit_little_endian_can_be_asked_for(client: httpx.Client) -> None:
    inst = store_one(client, J2K_CT)
    [(ts, body)] = dicom_parts(get(client, inst.url, f"{ACCEPT_DICOM}; transfer-syntax={IMPLICIT_LE}"))
    assert ts == IMPLICIT_LE
    got = read(body)
    assert got.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert np.array_equal(got.pixel_array, inst.ds.pixel_array)


# Accept header value (None = no header at all) -> transfer syntax expected for a JPEG 2000 instance.
ACCEPT_CASES: list[tuple[str | None, str]] = [
    (None, EXPLICIT_LE),
    ("undefined", EXPLICIT_LE),
    ("*/*", EXPLICIT_LE),
    ("*", EXPLICIT_LE),
    ("multipart/*", EXPLICIT_LE),
    (f"*/*; q=0.1, {ACCEPT_DICOM_AS_STORED}", J2K_LOSSLESS),
    ("multipart/related", EXPLICIT_LE),
    ("multipart/related; type=application/dicom", EXPLICIT_LE),
    ('multipart/related; type="application/dicom"', EXPLICIT_LE),
    ('multipart/related;type="application/dicom";transfer-syntax="*"', J2K_LOSSLESS),
    ("multipart/related; type=application/dicom; transfer-syntax=*", J2K_LOSSLESS),
    (f'multipart/related; type="application/dicom"; transfer-syntax="{EXPLICIT_LE}"', EXPLICIT_LE),
    (f"multipart/related; type=application/dicom; transfer-syntax={J2K_LOSSLESS}", J2K_LOSSLESS),
    (f"{ACCEPT_DICOM}; transfer-syntax={JPEG_BASELINE}; transfer-syntax={EXPLICIT_LE}", EXPLICIT_LE),
    (f"{ACCEPT_DICOM}; transfer-syntax={JPEG_BASELINE}; transfer-syntax=*", J2K_LOSSLESS),
    (f"{ACCEPT_DICOM}; transfer-syntax={EXPLICIT_LE}; q=0.5, {ACCEPT_DICOM_AS_STORED}; q=0.9", J2K_LOSSLESS),
    (f"{ACCEPT_DICOM_AS_STORED}; q=0.2, {ACCEPT_DICOM}; transfer-syntax={EXPLICIT_LE}; q=0.8", EXPLICIT_LE),
    (f"{ACCEPT_DICOM}; transfer-syntax={JPEG_BASELINE}, {ACCEPT_DICOM_AS_STORED}; q=0.1", J2K_LOSSLESS),
    (f"application/json, {ACCEPT_DICOM_AS_STORED}; q=0.5", J2K_LOSSLESS),
    (f"{ACCEPT_DICOM_AS_STORED}; q=0, {ACCEPT_DICOM}", EXPLICIT_LE),
    (f'MULTIPART/RELATED; TYPE="APPLICATION/DICOM"; TRANSFER-SYNTAX={J2K_LOSSLESS}', J2K_LOSSLESS),
]


@pytest.mark.parametrize(("accept", "expected_ts"), ACCEPT_CASES, ids=[str(a) for a, _ in ACCEPT_CASES])
def test_accept_negotiation(client: httpx.Client, accept: str | None, expected_ts: str) -> None:
    inst = store_one(client, J2K_CT)
    response = get_without_accept(client, inst.url) if accept is None else get(client, inst.url, accept)
    [(ts, body)] = dicom_parts(response)
    assert ts == expected_ts
    got = read(body)
    assert got.file_meta.TransferSyntaxUID == expected_ts
    assert got.SOPInstanceUID == inst.sop
    if expected_ts == J2K_LOSSLESS:
        assert body == inst.data


@pytest.mark.parametrize(
    ("query", "expected_ts"),
    [
        (ACCEPT_DICOM_AS_STORED, J2K_LOSSLESS),
        (f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}", EXPLICIT_LE),
        ("undefined", EXPLICIT_LE),
    ],
)
def test_accept_query_parameter(client: httpx.Client, query: str, expected_ts: str) -> None:
    inst = store_one(client, J2K_CT)
    # The accept= query parameter wins over the header (PS3.18 8.3.3.1); "undefined" means none given.
    header = DICOM_JSON if query != "undefined" else ACCEPT_DICOM
    response = client.get(inst.url, params={"accept": query}, headers={"Accept": header})
    [(ts, _body)] = dicom_parts(response)
    assert ts == expected_ts


def test_part_content_type_names_the_transfer_syntax(client: httpx.Client) -> None:
    inst = store_one(client, J2K_CT)
    response = get(client, inst.url, ACCEPT_DICOM_AS_STORED)
    [(headers, _body)] = parse_multipart(response)
    media, params = media_params(headers["content-type"])
    assert media == DICOM
    assert params == {"transfer-syntax": J2K_LOSSLESS}


def test_series_of_mixed_syntaxes_as_stored(client: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    stored = upload(
        client, new_uids(CT_SMALL, study=study, series=series), new_uids(J2K_CT, study=study, series=series)
    )
    parts = dicom_parts(get(client, stored[0].series_url, ACCEPT_DICOM_AS_STORED))
    by_sop = {read(body).SOPInstanceUID: (ts, body) for ts, body in parts}
    assert by_sop == {
        stored[0].sop: (EXPLICIT_LE, stored[0].data),
        stored[1].sop: (J2K_LOSSLESS, stored[1].data),
    }


@pytest.mark.parametrize(
    "accept",
    [
        f"{ACCEPT_DICOM}; transfer-syntax={JPEG_BASELINE}",
        f"{ACCEPT_DICOM}; transfer-syntax={J2K_LOSSLESS}",
        f"multipart/related; type={OCTET}",
        "application/json",
        "image/jpeg",
    ],
)
def test_unproducible_representation_is_406(client: httpx.Client, accept: str) -> None:
    inst = store_one(client, CT_SMALL)
    assert_error(get(client, inst.url, accept), 406)


def test_undecodable_instance_is_not_sent_as_a_broken_200(client: httpx.Client) -> None:
    # JPEG-lossy.dcm cannot be decoded by any installed plugin, so Explicit VR Little Endian (the
    # default) cannot be produced: the answer must be a 406 (or a complete, readable body), not a 200
    # whose body breaks off.
    inst = store_one(client, JPEG_LOSSY)
    try:
        response = client.get(inst.url)
    except httpx.HTTPError as exc:  # the connection was dropped mid-body
        pytest.fail(f"response broke off: {exc!r}")
    if response.status_code == 200:
        [(ts, body)] = dicom_parts(response)
        assert read(body).SOPInstanceUID == inst.sop
        assert ts in (EXPLICIT_LE, JPEG_EXTENDED)
    else:
        assert_error(response, 406)


def test_series_with_an_undecodable_instance_is_not_a_broken_200(client: httpx.Client) -> None:
    # The first instance decodes, the second (JPEG-lossy.dcm) does not: the answer must not be a 200
    # whose multipart body breaks off after the first part.
    study, series = generate_uid(), generate_uid()
    stored = upload(
        client,
        new_uids(J2K_CT, study=study, series=series, InstanceNumber="1"),
        new_uids(JPEG_LOSSY, study=study, series=series, InstanceNumber="2"),
    )
    try:
        response = client.get(f"/studies/{study}/series/{series}")
    except httpx.HTTPError as exc:
        pytest.fail(f"response broke off: {exc!r}")
    if response.status_code == 406:
        assert_error(response, 406)
        return
    # Otherwise a complete multipart body: all instances (200) or, announced as such, some (206).
    assert response.status_code in (200, 206), response.status_code
    sent = {read(body).SOPInstanceUID for _, body in parse_multipart(response)}
    expected = {s.sop for s in stored}
    assert sent == expected if response.status_code == 200 else sent < expected


def test_undecodable_instance_as_stored_is_fine(client: httpx.Client) -> None:
    inst = store_one(client, JPEG_LOSSY)
    [(ts, body)] = dicom_parts(get(client, inst.url, ACCEPT_DICOM_AS_STORED))
    assert ts == JPEG_EXTENDED
    assert body == inst.data


@pytest.mark.parametrize(
    ("source", "accept"),
    [
        ("CT_small", None),
        ("CT_small", ACCEPT_DICOM_AS_STORED),
        ("693_J2KR", ACCEPT_DICOM_AS_STORED),
        ("693_J2KR", None),
    ],
)
def test_content_length_equals_body_length(client: httpx.Client, source: str, accept: str | None) -> None:
    inst = store_one(client, SOURCES[source])
    for url in (inst.url, inst.series_url, inst.study_url):
        response = get(client, url, accept)
        assert response.status_code == 200
        assert_content_length_matches(response)


def test_content_length_present_for_stored_bytes(client: httpx.Client) -> None:
    inst = store_one(client, J2K_CT)
    response = get(client, inst.url, ACCEPT_DICOM_AS_STORED)
    assert int(response.headers["content-length"]) == len(response.content)


# ---- metadata ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "count"), [("study", 3), ("series", 2), ("instance", 1)])
def test_metadata_levels(client: httpx.Client, level: str, count: int) -> None:
    st = store_study_of_three(client)
    first = st.ct[0]
    url = {"study": first.study_url, "series": first.series_url, "instance": first.url}[level] + "/metadata"
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_JSON)
    items = response.json()
    assert isinstance(items, list) and len(items) == count
    expected = {"study": [*st.ct, st.mr], "series": st.ct, "instance": [first]}[level]
    assert {item["00080018"]["Value"][0] for item in items} == {i.sop for i in expected}


def _metadata_item(client: httpx.Client, inst: Stored) -> dict[str, Any]:
    response = client.get(inst.url + "/metadata")
    assert response.status_code == 200
    [item] = response.json()
    return item


def test_pixel_data_bulk_data_uri_is_absolute(client: httpx.Client, server: Server) -> None:
    inst = store_one(client, CT_SMALL)
    item = _metadata_item(client, inst)
    pixel = item["7FE00010"]
    assert "Value" not in pixel and "InlineBinary" not in pixel
    uri = pixel["BulkDataURI"]
    assert httpx.URL(uri).is_absolute_url
    assert uri.startswith(server.root + inst.url)


def test_pixel_data_bulk_data_default_is_multipart_octet_stream(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    uri = _metadata_item(client, inst)["7FE00010"]["BulkDataURI"]
    response = client.get(uri)
    assert response.status_code == 200
    media, params = media_params(response.headers["content-type"])
    assert (media, params["type"]) == ("multipart/related", OCTET)
    [(headers, body)] = parse_multipart(response)
    assert media_params(headers["content-type"])[0] == OCTET
    assert body == inst.ds.PixelData


def test_pixel_data_bulk_data_single_part(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    uri = _metadata_item(client, inst)["7FE00010"]["BulkDataURI"]
    response = client.get(uri, headers={"Accept": OCTET})
    assert response.status_code == 200
    assert media_params(response.headers["content-type"])[0] == OCTET
    assert response.content == inst.ds.PixelData


def test_multiframe_pixel_data_bulk_data(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    uri = _metadata_item(client, inst)["7FE00010"]["BulkDataURI"]
    response = client.get(uri, headers={"Accept": OCTET})
    assert response.status_code == 200
    assert response.content == inst.ds.PixelData


def test_every_bulk_data_uri_resolves_to_the_original_value(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    item = _metadata_item(client, inst)
    bulk = {tag: attr["BulkDataURI"] for tag, attr in item.items() if "BulkDataURI" in attr}
    assert "00431029" in bulk and "7FE00010" in bulk
    original = inst.ds
    for tag, uri in bulk.items():
        response = client.get(uri, headers={"Accept": OCTET})
        assert response.status_code == 200, (tag, response.text)
        assert response.content == original[int(tag, 16)].value, tag


def test_pixel_data_bulk_data_of_compressed_instance_is_decoded(client: httpx.Client) -> None:
    inst = store_one(client, J2K_CT)
    uri = _metadata_item(client, inst)["7FE00010"]["BulkDataURI"]
    response = client.get(uri, headers={"Accept": OCTET})
    assert response.status_code == 200
    assert response.content == decoded_frames(inst.data)[0]


def test_metadata_attributes_equal_the_uploaded_file(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    item = _metadata_item(client, inst)
    got = Dataset.from_json(item, bulk_data_uri_handler=lambda *_args: b"")
    original = inst.ds
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientSex",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "StudyDate",
        "StudyTime",
        "Modality",
        "InstitutionName",
        "Manufacturer",
        "ImageType",
        "Rows",
        "Columns",
        "BitsAllocated",
        "PixelRepresentation",
        "PixelSpacing",
        "SliceThickness",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "RescaleIntercept",
        "RescaleSlope",
        "KVP",
        "InstanceNumber",
        "SeriesNumber",
        "OtherPatientIDsSequence",
    ):
        assert got[keyword].value == original[keyword].value, keyword
        assert got[keyword].VR == original[keyword].VR, keyword


def test_metadata_of_every_element_round_trips(client: httpx.Client) -> None:
    inst = store_one(client, MR_SMALL)
    item = _metadata_item(client, inst)
    got = Dataset.from_json(item, bulk_data_uri_handler=lambda *_args: b"")
    original = inst.ds
    for elem in original:
        if elem.tag == 0x7FE00010 or elem.VR in ("OB", "OW", "UN") or elem.tag.is_private:
            continue
        assert elem.tag in got, elem
        assert got[elem.tag].value == elem.value, elem


# ---- frames --------------------------------------------------------------------------------------------


def frame_parts(response: httpx.Response) -> list[tuple[str, dict[str, str], bytes]]:
    assert response.status_code == 200, response.text
    media, _params = media_params(response.headers["content-type"])
    assert media == "multipart/related"
    out = []
    for headers, body in parse_multipart(response):
        part_media, part_params = media_params(headers["content-type"])
        out.append((part_media, part_params, body))
    return out


@pytest.mark.parametrize("numbers", [[1], [1, 3, 5], [10], [5, 1], [2, 2]])
def test_frames_uncompressed(client: httpx.Client, numbers: list[int]) -> None:
    inst = store_one(client, EMRI)
    originals = native_frames(inst.data)
    assert len(originals) == 10
    response = client.get(f"{inst.url}/frames/{','.join(map(str, numbers))}")
    parts = frame_parts(response)
    assert [media for media, _, _ in parts] == [OCTET] * len(numbers)
    assert [body for _, _, body in parts] == [originals[n - 1] for n in numbers]


def test_frames_multipart_type_is_octet_stream(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    response = client.get(f"{inst.url}/frames/1,2")
    media, params = media_params(response.headers["content-type"])
    assert (media, params["type"]) == ("multipart/related", OCTET)


@pytest.mark.parametrize(
    ("source", "numbers"), [("emri_small_j2k", [1, 3, 5]), ("emri_small_j2k", [10]), ("693_J2KR", [1])]
)
def test_frames_as_stored_jpeg2000(client: httpx.Client, source: str, numbers: list[int]) -> None:
    inst = store_one(client, SOURCES[source])
    response = get(client, f"{inst.url}/frames/{','.join(map(str, numbers))}", ACCEPT_FRAMES_AS_STORED)
    parts = frame_parts(response)
    streams = codestreams(inst.data)
    assert [body for _, _, body in parts] == [streams[n - 1] for n in numbers]
    for media, params, _body in parts:
        assert media == "image/jp2"
        assert params.get("transfer-syntax") == J2K_LOSSLESS


def test_frames_as_stored_jpeg(client: httpx.Client) -> None:
    inst = store_one(client, JPEG_LOSSY)
    [(media, params, body)] = frame_parts(get(client, f"{inst.url}/frames/1", ACCEPT_FRAMES_AS_STORED))
    assert media == "image/jpeg"
    assert params.get("transfer-syntax") == JPEG_EXTENDED
    assert body == codestreams(inst.data)[0]


def test_frames_of_undecodable_instance_default_is_406(client: httpx.Client) -> None:
    inst = store_one(client, JPEG_LOSSY)
    assert_error(client.get(f"{inst.url}/frames/1"), 406)


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jp2"',
        f"multipart/related; type=image/jp2; transfer-syntax={J2K_LOSSLESS}",
        'multipart/related; type="image/jp2"; transfer-syntax="*"',
    ],
)
def test_frames_in_their_stored_media_type(client: httpx.Client, accept: str) -> None:
    inst = store_one(client, EMRI_J2K)
    parts = frame_parts(get(client, f"{inst.url}/frames/1,2", accept))
    streams = codestreams(inst.data)
    assert [body for _, _, body in parts] == streams[:2]
    assert all(
        media == "image/jp2" and params.get("transfer-syntax") == J2K_LOSSLESS for media, params, _ in parts
    )


def test_frame_list_with_encoded_commas(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    parts = frame_parts(client.get(f"{inst.url}/frames/1%2C3"))
    originals = native_frames(inst.data)
    assert [body for _, _, body in parts] == [originals[0], originals[2]]


def test_frames_of_compressed_instance_default_to_decoded_octets(client: httpx.Client) -> None:
    inst = store_one(client, EMRI_J2K)
    parts = frame_parts(client.get(f"{inst.url}/frames/2,4"))
    expected = decoded_frames(inst.data)
    assert [body for _, _, body in parts] == [expected[1], expected[3]]
    assert all(media == OCTET for media, _, _ in parts)


def test_frames_as_stored_from_uncompressed_are_octets(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    parts = frame_parts(get(client, f"{inst.url}/frames/3", ACCEPT_FRAMES_AS_STORED))
    [(media, _params, body)] = parts
    assert media == OCTET
    assert body == native_frames(inst.data)[2]


def test_single_frame_single_part_octet_stream(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    response = get(client, f"{inst.url}/frames/4", OCTET)
    assert response.status_code == 200
    assert media_params(response.headers["content-type"])[0] == OCTET
    assert response.content == native_frames(inst.data)[3]
    assert_content_length_matches(response)


def test_single_frame_single_part_in_stored_media_type(client: httpx.Client) -> None:
    inst = store_one(client, EMRI_J2K)
    response = get(client, f"{inst.url}/frames/7", "image/jp2")
    assert response.status_code == 200
    media, params = media_params(response.headers["content-type"])
    assert media == "image/jp2"
    assert params.get("transfer-syntax") == J2K_LOSSLESS
    assert response.content == codestreams(inst.data)[6]


@pytest.mark.parametrize(
    ("accept", "expected_media"),
    [
        (f'multipart/related; type="image/jp2"; q=0.5, multipart/related; type="{OCTET}"; q=0.9', OCTET),
        (
            f'multipart/related; type="image/jp2"; q=0.9, multipart/related; type="{OCTET}"; q=0.5',
            "image/jp2",
        ),
    ],
)
def test_frames_follow_q_values(client: httpx.Client, accept: str, expected_media: str) -> None:
    inst = store_one(client, EMRI_J2K)
    [(media, _params, body)] = frame_parts(get(client, f"{inst.url}/frames/2", accept))
    assert media == expected_media
    expected = codestreams(inst.data)[1] if media == "image/jp2" else decoded_frames(inst.data)[1]
    assert body == expected


def test_frame_of_single_frame_instance(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    [(media, _params, body)] = frame_parts(client.get(f"{inst.url}/frames/1"))
    assert media == OCTET
    assert body == inst.ds.PixelData
    assert_error(client.get(f"{inst.url}/frames/2"), 404)


def test_frames_in_unavailable_media_type_is_406(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    assert_error(get(client, f"{inst.url}/frames/1", 'multipart/related; type="image/jls"'), 406)


def test_frames_as_jpeg_2000_right_after_store_wait_for_the_master(client: httpx.Client) -> None:
    """Uncompressed when stored: JPEG 2000 needs the master, which the request hurries and waits for."""
    inst = store_one(client, EMRI)
    [(media, params, body)] = frame_parts(
        get(client, f"{inst.url}/frames/1", 'multipart/related; type="image/jp2"')
    )
    assert media == "image/jp2" and params.get("transfer-syntax") == J2K_LOSSLESS
    assert body[:2] == b"\xff\x4f"


@pytest.fixture(scope="module")
def emri(client: httpx.Client) -> Stored:
    """A 10-frame MR, for the frame-list tests."""
    return store_one(client, EMRI)


def without_pixels(source: bytes) -> bytes:
    ds = read(source)
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# Frame lists that are the client's error (PS3.18 8.3.1: positive integers separated by commas), with a
# word the reason must contain. "1 2" must not become frame 12, nor a digit of another script a frame.
BAD_FRAME_LISTS = [
    ("0", "start at 1"),
    ("00", "start at 1"),
    ("1,0", "start at 1"),
    ("-1", "start at 1"),
    ("2,-3", "start at 1"),
    ("-0", "start at 1"),
    ("1,,3", "empty"),
    (",1", "empty"),
    ("1,", "empty"),
    (",", "empty"),
    ("%20", "empty"),
    ("1.5", "not a frame number"),
    ("1e0", "not a frame number"),
    ("+1", "not a frame number"),
    ("0x1", "not a frame number"),
    ("abc", "not a frame number"),
    ("1;2", "not a frame number"),
    ("1%202", "not a frame number"),
    ("%D9%A3", "not a frame number"),
    ("%C2%B2", "not a frame number"),
    ("1,two", "not a frame number"),
]


@pytest.mark.parametrize("suffix", ["", "/rendered", "/thumbnail"])
@pytest.mark.parametrize(("frames", "reason"), BAD_FRAME_LISTS)
def test_malformed_frame_list_is_400(
    client: httpx.Client, emri: Stored, frames: str, reason: str, suffix: str
) -> None:
    response = client.get(f"{emri.url}/frames/{frames}{suffix}")
    assert_error(response, 400)
    assert reason in response.json()["error"], response.json()["error"]


@pytest.mark.parametrize("frames", ["0", "1,,2", "-1"])
def test_malformed_frame_list_is_400_before_anything_else(client: httpx.Client, frames: str) -> None:
    """Also for an instance without pixel data, and with progressive parameters."""
    inst = store_one(client, without_pixels(CT_SMALL))
    for suffix in ("", "/rendered", "/thumbnail", "?layers=1", "?fsiz=1,1"):
        assert_error(client.get(f"{inst.url}/frames/{frames}{suffix}"), 400)


@pytest.mark.parametrize("suffix", ["", "/rendered", "/thumbnail"])
@pytest.mark.parametrize("frames", ["11", "1,11", "100", "1 , 11", "9" * 30, "1," + "9" * 5000])
def test_frame_out_of_range_is_404(client: httpx.Client, emri: Stored, frames: str, suffix: str) -> None:
    assert_error(client.get(f"{emri.url}/frames/{frames}{suffix}"), 404)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"layers": "\u00b2"}, 400),
        ({"fsiz": "\u0663,1"}, 400),
        ({"layers": "0"}, 400),
        # A huge layer count means all layers: not a master yet (or not a cut), so no uncompressed answer.
        ({"layers": "9" * 5000}, 406),
    ],
)
def test_progressive_parameters_with_odd_digits(
    client: httpx.Client, emri: Stored, params: dict, status: int
) -> None:
    response = client.get(f"{emri.url}/frames/1", params=params, headers={"Accept": "image/jp2"})
    if status == 406:
        assert response.status_code in (200, 406, 503), response.text
    else:
        assert_error(response, status)


def test_frame_list_items_may_have_spaces(client: httpx.Client, emri: Stored) -> None:
    parts = frame_parts(client.get(f"{emri.url}/frames/1,%203"))
    originals = native_frames(emri.data)
    assert [body for _, _, body in parts] == [originals[0], originals[2]]


def test_frames_of_unknown_instance_is_404(client: httpx.Client) -> None:
    inst = store_one(client, EMRI)
    assert_error(client.get(f"{inst.series_url}/instances/{generate_uid()}/frames/1"), 404)


# ---- unknown and malformed resources -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/metadata"])
def test_unknown_resources_are_404(client: httpx.Client, suffix: str) -> None:
    inst = store_one(client, CT_SMALL)
    for url in unknown_urls(inst):
        assert_error(client.get(url + suffix), 404)


@pytest.mark.parametrize(
    "url",
    [
        "/studies/not-a-uid",
        "/studies/not-a-uid/metadata",
        "/studies/1.2.3/series/abc",
        "/studies/1.2.3/series/4.5.6/instances/7..8",
        "/studies/1.2.3/series/4.5.6/instances/x/frames/1",
        "/studies/" + "1" * 65,
    ],
)
def test_malformed_uid_in_path_is_400(client: httpx.Client, url: str) -> None:
    assert_error(client.get(url), 400)


# ---- stable bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [("", None), ("", ACCEPT_DICOM_AS_STORED), ("/frames/1,2", None), ("/frames/1", ACCEPT_FRAMES_AS_STORED)],
)
def test_repeated_requests_give_identical_bytes(
    client: httpx.Client, suffix: str, accept: str | None
) -> None:
    inst = store_one(client, EMRI_J2K)
    first = get(client, inst.url + suffix, accept)
    second = get(client, inst.url + suffix, accept)
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == second.headers["content-type"]
    assert first.content == second.content


def test_repeated_series_requests_give_identical_bytes(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    first = client.get(st.ct[0].series_url)
    second = client.get(st.ct[0].series_url)
    assert first.content == second.content
    assert first.headers["content-type"] == second.headers["content-type"]


# ---- delete --------------------------------------------------------------------------------------------


def _qido_sops(client: httpx.Client, study: str) -> set[str]:
    response = client.get("/instances", params={"StudyInstanceUID": study})
    assert response.status_code == 200
    return {r["00080018"]["Value"][0] for r in response.json()}


def test_delete_instance(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    gone, kept = st.ct
    response = client.delete(gone.url)
    assert 200 <= response.status_code < 300
    assert_error(client.get(gone.url), 404)
    assert_error(client.get(gone.url + "/metadata"), 404)
    assert client.get(kept.url).status_code == 200
    assert _qido_sops(client, st.study) == {kept.sop, st.mr.sop}
    [series] = client.get(f"/studies/{st.study}/series", params={"SeriesInstanceUID": gone.series}).json()
    assert int(series["00201209"]["Value"][0]) == 1


def test_delete_series(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    response = client.delete(st.ct[0].series_url)
    assert 200 <= response.status_code < 300
    assert_error(client.get(st.ct[0].series_url), 404)
    assert_error(client.get(st.ct[1].url), 404)
    assert _qido_sops(client, st.study) == {st.mr.sop}
    series = client.get(f"/studies/{st.study}/series").json()
    assert {s["0020000E"]["Value"][0] for s in series} == {st.mr.series}
    [study] = client.get("/studies", params={"StudyInstanceUID": st.study}).json()
    assert int(study["00201206"]["Value"][0]) == 1
    assert study["00080061"]["Value"] == ["MR"]


def test_delete_study(client: httpx.Client) -> None:
    st = store_study_of_three(client)
    response = client.delete(f"/studies/{st.study}")
    assert 200 <= response.status_code < 300
    assert_error(client.get(f"/studies/{st.study}"), 404)
    assert_error(client.get(f"/studies/{st.study}/metadata"), 404)
    assert_error(client.get(st.mr.url), 404)
    assert client.get("/studies", params={"StudyInstanceUID": st.study}).json() == []
    assert client.get("/instances", params={"StudyInstanceUID": st.study}).json() == []


def test_delete_unknown_is_404(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    for url in unknown_urls(inst):
        assert_error(client.delete(url), 404)
    assert client.get(inst.url).status_code == 200  # none of that touched the real instance


def test_delete_twice_is_404_the_second_time(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    assert 200 <= client.delete(inst.url).status_code < 300
    assert_error(client.delete(inst.url), 404)


def test_store_after_delete(client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    assert 200 <= client.delete(inst.study_url).status_code < 300
    assert stow(client, [inst.data]).status_code == 200
    [(_ts, body)] = dicom_parts(get(client, inst.url, ACCEPT_DICOM_AS_STORED))
    assert body == inst.data


# ---- dicomweb-client -----------------------------------------------------------------------------------


@pytest.fixture
def dwc(server: Server) -> DICOMwebClient:
    return DICOMwebClient(url=server.root)


def _fresh_datasets(*sources: bytes, **changes: str) -> list[Dataset]:
    return [read(new_uids(src, **changes)) for src in sources]


def _tag_value(result: dict[str, Any], tag: str) -> Any:
    return result[tag]["Value"][0]


@pytest.fixture
def stored_by_dwc(dwc: DICOMwebClient) -> tuple[str, list[Dataset]]:
    pid = f"DWC-{uuid.uuid4().hex.upper()}"
    study, series = generate_uid(), generate_uid()
    datasets = _fresh_datasets(CT_SMALL, CT_SMALL, study=study, series=series, PatientID=pid)
    datasets += _fresh_datasets(EMRI, study=study, PatientID=pid)
    receipt = dwc.store_instances(datasets)
    assert len(receipt.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in receipt
    return pid, datasets


def test_dwc_store_and_search(dwc: DICOMwebClient, stored_by_dwc: tuple[str, list[Dataset]]) -> None:
    pid, datasets = stored_by_dwc
    study = datasets[0].StudyInstanceUID
    [found] = dwc.search_for_studies(search_filters={"PatientID": pid})
    assert _tag_value(found, "0020000D") == study
    assert int(_tag_value(found, "00201208")) == 3
    series = dwc.search_for_series(study_instance_uid=study)
    assert {_tag_value(s, "0020000E") for s in series} == {ds.SeriesInstanceUID for ds in datasets}
    instances = dwc.search_for_instances(
        study_instance_uid=study, series_instance_uid=datasets[0].SeriesInstanceUID
    )
    assert {_tag_value(i, "00080018") for i in instances} == {ds.SOPInstanceUID for ds in datasets[:2]}
    everything = dwc.search_for_instances(search_filters={"PatientID": pid})
    assert {_tag_value(i, "00080018") for i in everything} == {ds.SOPInstanceUID for ds in datasets}


def test_dwc_retrieve_instance(dwc: DICOMwebClient, stored_by_dwc: tuple[str, list[Dataset]]) -> None:
    _pid, datasets = stored_by_dwc
    original = datasets[2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = dwc.retrieve_instance(
            original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
        )
    # The client warns when a response is not the multipart/related the standard asks for.
    assert not [w for w in caught if "compliant" in str(w.message)]
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PatientID == original.PatientID
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_dwc_retrieve_series_metadata(dwc: DICOMwebClient, stored_by_dwc: tuple[str, list[Dataset]]) -> None:
    _pid, datasets = stored_by_dwc
    items = dwc.retrieve_series_metadata(datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)
    assert len(items) == 2
    by_sop = {ds.SOPInstanceUID: ds for ds in datasets[:2]}
    for item in items:
        got = Dataset.from_json(item, bulk_data_uri_handler=lambda *_args: b"")
        original = by_sop[got.SOPInstanceUID]
        for keyword in ("PatientID", "StudyInstanceUID", "Rows", "Columns", "PixelSpacing", "ImageType"):
            assert got[keyword].value == original[keyword].value, keyword


def test_dwc_retrieve_instance_frames(dwc: DICOMwebClient, stored_by_dwc: tuple[str, list[Dataset]]) -> None:
    _pid, datasets = stored_by_dwc
    mr = datasets[2]
    frames = dwc.retrieve_instance_frames(
        mr.StudyInstanceUID,
        mr.SeriesInstanceUID,
        mr.SOPInstanceUID,
        frame_numbers=[1, 3, 5],
        media_types=((OCTET, "*"),),
    )
    size = len(mr.PixelData) // 10
    assert frames == [mr.PixelData[i * size : (i + 1) * size] for i in (0, 2, 4)]


def test_dwc_retrieve_compressed_frames_as_stored(dwc: DICOMwebClient, client: httpx.Client) -> None:
    inst = store_one(client, EMRI_J2K)
    frames = dwc.retrieve_instance_frames(
        inst.study, inst.series, inst.sop, frame_numbers=[2, 9], media_types=((OCTET, "*"),)
    )
    streams = codestreams(inst.data)
    assert frames == [streams[1], streams[8]]


def test_dwc_search_with_fuzzy_matching_fields_and_paging(dwc: DICOMwebClient, client: httpx.Client) -> None:
    pid = f"DWC-{uuid.uuid4().hex.upper()}"
    uids = {
        store_one(
            client, CT_SMALL, PatientID=pid, PatientName="Doe^John", StudyDescription="DWC fields"
        ).study
        for _ in range(3)
    }
    found = dwc.search_for_studies(
        fuzzymatching=True,
        fields=["StudyDescription"],
        search_filters={"PatientID": pid, "PatientName": "joh"},
    )
    assert {_tag_value(r, "0020000D") for r in found} == uids
    assert all(_tag_value(r, "00081030") == "DWC fields" for r in found)
    pages = [
        dwc.search_for_studies(limit=2, offset=offset, search_filters={"PatientID": pid}) for offset in (0, 2)
    ]
    assert [len(p) for p in pages] == [2, 1]
    assert {_tag_value(r, "0020000D") for page in pages for r in page} == uids
    everything = dwc.search_for_studies(limit=1, get_remaining=True, search_filters={"PatientID": pid})
    assert {_tag_value(r, "0020000D") for r in everything} == uids


def test_dwc_retrieve_series_and_metadata_of_instance(
    dwc: DICOMwebClient, stored_by_dwc: tuple[str, list[Dataset]]
) -> None:
    _pid, datasets = stored_by_dwc
    first = datasets[0]
    series = dwc.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {ds.SOPInstanceUID for ds in series} == {ds.SOPInstanceUID for ds in datasets[:2]}
    meta = dwc.retrieve_instance_metadata(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert _tag_value(meta, "00080018") == first.SOPInstanceUID


def test_dwc_retrieve_bulkdata(dwc: DICOMwebClient, client: httpx.Client) -> None:
    inst = store_one(client, MR_SMALL)
    uri = _metadata_item(client, inst)["7FE00010"]["BulkDataURI"]
    assert dwc.retrieve_bulkdata(uri) == [inst.ds.PixelData]


def test_dwc_delete_instance(dwc: DICOMwebClient, client: httpx.Client) -> None:
    inst = store_one(client, CT_SMALL)
    dwc.delete_instance(inst.study, inst.series, inst.sop)
    assert_error(client.get(inst.url), 404)
