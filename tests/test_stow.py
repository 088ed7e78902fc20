"""STOW-RS: statuses, response bodies, and bad input that must be refused without storing anything."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from storage.implementation import IMPLEMENTATION_CLASS_UID
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, multipart_body, new_uids, parse_multipart, stow

CT = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
MULTI = 'multipart/related; type="application/dicom"; boundary=b0undary'
STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def referenced(body: dict) -> list[str]:
    return [i["00081155"]["Value"][0] for i in body.get("00081199", {}).get("Value", [])]


def failed(body: dict) -> list[dict]:
    return body.get("00081198", {}).get("Value", [])


def study_exists(client: httpx.Client, study: str) -> bool:
    r = client.get("/studies", params={"StudyInstanceUID": study})
    assert r.status_code == 200
    return bool(r.json())


def test_store_returns_references_and_retrieve_urls(client: httpx.Client) -> None:
    study = generate_uid()
    files = [new_uids(CT, study=study) for _ in range(3)]
    r = stow(client, files)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    assert body["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")
    assert len(referenced(body)) == 3
    for item in body["00081199"]["Value"]:
        url = item["00081190"]["Value"][0]
        assert url.startswith("http://127.0.0.1:")
        assert (
            client.get(
                url, headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}
            ).status_code
            == 200
        )


def test_single_part_application_dicom(client: httpx.Client) -> None:
    data = new_uids(CT)
    r = client.post("/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200
    assert len(referenced(r.json())) == 1


def test_unquoted_parameters_and_study_in_url(client: httpx.Client) -> None:
    study = generate_uid()
    body = multipart_body([new_uids(CT, study=study)], boundary="abc")
    r = client.post(
        f"/studies/{study}",
        content=body,
        headers={"Content-Type": "multipart/related; boundary=abc; type=application/dicom"},
    )
    assert r.status_code == 200


def test_same_instance_twice_keeps_one_copy(client: httpx.Client, server) -> None:
    data = new_uids(CT)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert stow(client, [data]).status_code == 200
    assert stow(client, [data, data]).status_code == 200
    r = client.get(f"/studies/{ds.StudyInstanceUID}/instances")
    assert [i["00080018"]["Value"][0] for i in r.json()] == [ds.SOPInstanceUID]
    blobs = [p for p in (server.data_dir / "blobs").rglob(f"{ds.SOPInstanceUID}.*")]
    assert len(blobs) == 1


def test_wrong_study_in_url_is_refused(client: httpx.Client) -> None:
    data = new_uids(CT)
    other = generate_uid()
    r = stow(client, [data], study=other)
    assert r.status_code == 409
    item = failed(r.json())[0]
    assert item["00081197"]["Value"][0] == 0xA900
    assert "does not match" in item["00000902"]["Value"][0]
    assert not study_exists(client, other)
    assert not study_exists(client, pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)


def test_mixed_good_and_bad_parts_gives_202(client: httpx.Client) -> None:
    study = generate_uid()
    good = new_uids(CT, study=study)
    no_sop = pydicom.dcmread(io.BytesIO(new_uids(CT, study=study)))
    del no_sop.SOPInstanceUID
    buf = io.BytesIO()
    no_sop.save_as(buf)
    truncated = new_uids(CT, study=study)[:-5000]
    r = stow(client, [good, b"this is not DICOM at all", buf.getvalue(), truncated])
    assert r.status_code == 202
    body = r.json()
    assert len(referenced(body)) == 1
    reasons = [f["00000902"]["Value"][0] for f in failed(body)]
    # In part order, each naming its part: a part that is not DICOM has no UIDs to tell it by.
    assert [x.split(":")[0] for x in reasons] == ["part 2", "part 3", "part 4"]
    assert "not a DICOM file" in reasons[0]
    assert "SOPInstanceUID" in reasons[1] or "SOP Instance UID" in reasons[1]
    assert "truncated" in reasons[2]
    assert all(f["00081197"]["Value"][0] == 0xC000 for f in failed(body))
    instances = client.get(f"/studies/{study}/instances").json()
    assert len(instances) == 1


def test_all_parts_bad_gives_409(client: httpx.Client) -> None:
    r = stow(client, [b"garbage", b"\x00" * 200])
    assert r.status_code == 409
    assert len(failed(r.json())) == 2


def test_wrong_media_type_is_415(client: httpx.Client) -> None:
    r = client.post("/studies", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    assert "error" in r.json()
    r = client.post(
        "/studies",
        content=b"x",
        headers={"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'},
    )
    assert r.status_code == 415


def test_missing_boundary_is_400(client: httpx.Client) -> None:
    r = client.post(
        "/studies",
        content=multipart_body([CT]),
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert r.status_code == 400
    assert "boundary" in r.json()["error"]


def test_truncated_body_is_400_and_stores_nothing(client: httpx.Client) -> None:
    study = generate_uid()
    body = multipart_body([new_uids(CT, study=study), new_uids(CT, study=study)], boundary="b0undary")
    r = client.post("/studies", content=body[: len(body) // 2 + 1000], headers={"Content-Type": MULTI})
    assert r.status_code == 400
    assert "truncated" in r.json()["error"]
    assert not study_exists(client, study)


def test_body_truncated_after_many_parts_stores_nothing(client: httpx.Client, server) -> None:
    """Parsing starts while the upload arrives; an upload that then breaks still stores nothing and
    leaves no files behind."""
    study = generate_uid()
    body = multipart_body([new_uids(CT, study=study) for _ in range(20)], boundary="b0undary")
    r = client.post("/studies", content=body[: len(body) - len(CT) // 2], headers={"Content-Type": MULTI})
    assert r.status_code == 400
    assert "truncated" in r.json()["error"]
    assert not study_exists(client, study)
    assert not any(p.is_file() for p in (server.data_dir / "tmp").rglob("*"))
    assert stow(client, [new_uids(CT, study=study)]).status_code == 200


def test_body_without_any_boundary_is_400(client: httpx.Client) -> None:
    r = client.post("/studies", content=CT, headers={"Content-Type": MULTI})
    assert r.status_code == 400


def test_absurd_declared_sizes(client: httpx.Client, server) -> None:
    # A Content-Length far beyond the limit is refused before the body is read (raw socket: httpx
    # will not send a body shorter than its declared length).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTI}\r\n"
            f"Content-Length: {10**15}\r\n\r\n--b0undary\r\n".encode()
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert b" 413 " in status_line
    # A DICOM element claiming a length of nearly 4 GB inside a small file.
    data = bytearray(new_uids(CT))
    i = data.rfind(b"\xe0\x7f\x10\x00")
    assert i > 0
    data[i + 8 : i + 12] = (0xFFFFFFF0).to_bytes(4, "little")
    r = stow(client, [bytes(data)])
    assert r.status_code == 409
    assert failed(r.json())[0]["00081197"]["Value"][0] == 0xC000


def test_malformed_uid_in_url_is_400(client: httpx.Client) -> None:
    r = stow(client, [new_uids(CT)], study="1.2.abc")
    assert r.status_code == 400


def test_server_survives_garbage(client: httpx.Client, server) -> None:
    for body, ctype in [(b"\xff" * 1000, MULTI), (b"--b0undary\r\n\r\n", MULTI), (b"", "application/dicom")]:
        r = client.post("/studies", content=body, headers={"Content-Type": ctype})
        assert 400 <= r.status_code < 500
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()[1])  # noqa: SIM115
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_upload_survives_killed_parser_processes(client: httpx.Client, server) -> None:
    """Parser worker processes that die are replaced; the next upload is stored."""
    assert stow(client, [new_uids(CT)]).status_code == 200  # the pool is up
    workers = [p for p in _descendants(server.proc.pid) if _descendants(p) == []]
    assert workers, "no parser processes found"
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    r = stow(client, [new_uids(CT), new_uids(CT)])
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def headerless(name: str) -> tuple[pydicom.Dataset, bytes]:
    """A copy of a pydicom-data file stored the way old tools write it: no preamble, no File Meta."""
    ds = pydicom.dcmread(PYDICOM_DATA / name, force=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=False)
    data = out.getvalue()
    assert data[128:132] != b"DICM" and not data.startswith(b"\x02\x00")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # so pydicom decodes the original
    return ds, data


def test_file_without_part10_header_is_stored_as_part10(client: httpx.Client) -> None:
    """pydicom-data's OT-PAL-8-face.dcm has no preamble and no File Meta Information: it is stored with
    them added (dataset bytes unchanged), so every retrieval of it works."""
    original, data = headerless("OT-PAL-8-face.dcm")
    r = stow(client, [data])
    assert r.status_code == 200, r.text
    url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    stored = parse_multipart(client.get(url, headers={"Accept": STORED}))[0][1]
    ds = pydicom.dcmread(io.BytesIO(stored))  # a proper Part 10 file: no force needed
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90")
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    native = parse_multipart(client.get(url))[0][1]
    assert np.array_equal(pydicom.dcmread(io.BytesIO(native)).pixel_array, original.pixel_array)
    for resource in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        r = client.get(url + resource)
        assert r.status_code == 200, (resource, r.text)
        assert r.headers["content-type"] == "image/jpeg"
