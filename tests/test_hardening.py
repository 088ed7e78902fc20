"""Hostile input gets a 4xx with a reason, never a 500; limits for slow and greedy clients; TLS."""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from tests.conftest import PYDICOM_TEST_FILES, Server, multipart_body, new_uids, stow

BIG = "18446744073709551616"  # 2**64
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary-1234'


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("hardening") / "data",
        {
            "DICOMWEB_MAX_UPLOADS_PER_CLIENT": "1",
            "DICOMWEB_BODY_TIMEOUT": "1",
            "DICOMWEB_HEADER_TIMEOUT": "1",
        },
    )
    yield srv
    srv.stop()


def raw_request(srv: Server, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "query",
    [
        f"limit={BIG}",
        f"offset={BIG}",
        f"SeriesNumber={BIG}",
        f"InstanceNumber={BIG}",
        f"Rows=-{BIG}",
        f"00200013=1,{BIG}",
    ],
)
def test_integers_beyond_64_bits_are_400(strict: Server, query: str) -> None:
    level = "instances" if "Instance" in query or "Rows" in query or "0020" in query else "series"
    r = httpx.get(f"{strict.root}/{level}?{query}")
    assert r.status_code == 400, r.text
    assert "64-bit" in r.json()["error"] or "at most" in r.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        b"/dicom-web/studies/%FF%FE",
        b"/dicom-web/studies/%FF%FE/series",
        b"/dicom-web/studies/1.2/series/%C0%AE/metadata",
        b"/dicom-web/studies/\xff\xfe",
        b"/dicom-web/studies?PatientName=\xff",
        b"/dicom-web/studies?%FF=1",
    ],
)
def test_path_bytes_that_are_not_utf8_are_400(strict: Server, path: bytes) -> None:
    answer = raw_request(strict, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_absurd_declared_frame_size_is_refused_at_store(strict: Server) -> None:
    ds = pydicom.dcmread(io.BytesIO(new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())))
    ds.Rows = ds.Columns = 65535
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # a few bytes claiming 25 GB
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with httpx.Client(base_url=strict.root, timeout=60) as client:
        r = stow(client, [out.getvalue()])
    assert r.status_code == 409, r.text
    comment = r.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
    assert "exceeds the limit" in comment or "declared frame" in comment, comment


def test_stalled_body_gets_408(strict: Server) -> None:
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    started = time.time()
    answer = raw_request(strict, head + b"DICM" * 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"stalled" in answer and time.time() - started < 8


def test_slow_headers_are_cut(strict: Server) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        s.sendall(b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.time()
        assert s.recv(100) == b""  # closed by the server
        assert time.time() - started < 5


def test_concurrent_uploads_per_client_are_capped(strict: Server) -> None:
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as slow:
        slow.sendall(head + b"DICM")  # holds the only upload slot (for up to the 1 s body timeout)
        time.sleep(0.2)
        ct = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
        r = httpx.post(
            f"{strict.root}/studies", content=multipart_body([ct]), headers={"Content-Type": STOW_TYPE}
        )
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1" and "uploads at once" in r.json()["error"]
    time.sleep(1.5)
    r = httpx.post(
        f"{strict.root}/studies", content=multipart_body([ct]), headers={"Content-Type": STOW_TYPE}
    )
    assert r.status_code == 200, r.text


# ---- TLS --------------------------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    srv = Server(tmp_path / "data", args=["--tls-cert", str(cert), "--tls-key", str(key)], scheme="https")
    try:
        assert srv.base.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            assert client.get(f"{srv.root}/studies").status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted
            httpx.get(f"{srv.root}/studies")
        assert "starting on https://" in Path(srv.log.name).read_text()
    finally:
        srv.stop()
