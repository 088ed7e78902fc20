"""The S3 blob store against a real S3-protocol server (moto's, on loopback): ranged reads, multipart
upload, a failed upload leaving nothing, key checks, and the server's start-up and readiness checks."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import httpx
import pytest

from bench.cluster import BUCKET, S3_CREDENTIALS, kill_group, start_s3_server
from storage.blobs import check_key
from storage.config import Settings
from storage.s3_blobs import S3BlobStore
from tests.conftest import PYDICOM_TEST_FILES, Server, free_port, new_uids, stow, wait_for_masters


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="dicomweb-s3-"))
    endpoint, proc = start_s3_server(base)
    yield endpoint
    kill_group(proc.pid)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> dict[str, str]:
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def store_at(endpoint: str, tmp: Path, prefix: str, **options) -> S3BlobStore:
    settings = Settings(
        data_dir=tmp, blob_url=f"s3://{BUCKET}/{prefix}", s3_endpoint=endpoint, s3_region="us-east-1"
    )
    return S3BlobStore.from_settings(settings, **options)


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_put_ranged_reads_stream_and_delete(
    aws_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    store = store_at(s3_endpoint, tmp_path, "unit-ranges")
    await store.check(write=True)
    src = tmp_path / "in.dcm"
    data = random_file(src, 3 * 1024 * 1024 + 17)
    key = "ab/1.2.3/1.2.3.4.1f.dcm"
    assert await store.put_file(key, src) == len(data)
    assert not src.exists()  # consumed, like the local store
    assert await store.read(key, 0, 10) == data[:10]
    assert await store.read(key, 1000, 5000) == data[1000:6000]
    assert await store.read(key, len(data) - 5) == data[-5:]
    assert await store.read(key, 7, 0) == b""
    pieces = [p async for p in store.chunks(key)]
    assert b"".join(pieces) == data
    async with store.local_file(key) as path:
        assert path.read_bytes() == data
        assert path.parent == Settings(data_dir=tmp_path).tmp_dir  # this process's temporary folder
    assert not path.exists()
    # Only the object under the prefix exists: keys are relative to it.
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="unit-ranges/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["unit-ranges/_readiness/marker", f"unit-ranges/{key}"]
    await store.delete(key)
    await store.delete(key)  # deleting again is harmless, as in the local store
    with pytest.raises(FileNotFoundError):
        await store.read(key, 0, 10)
    with pytest.raises(FileNotFoundError):
        async with store.local_file(key):
            pass
    assert list(Settings(data_dir=tmp_path).tmp_dir.iterdir()) == []


async def test_put_files_reports_each_outcome(
    aws_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    store = store_at(s3_endpoint, tmp_path, "unit-many")
    items = []
    for i in range(10):
        random_file(tmp_path / f"{i}.dcm", 1000 + i)
        items.append((f"cd/1.2/1.2.{i}.dcm", tmp_path / f"{i}.dcm"))
    items.append(("cd/1.2/missing.dcm", tmp_path / "no-such-file"))
    results = await store.put_files(items)
    assert results[:10] == [1000 + i for i in range(10)]
    assert isinstance(results[10], FileNotFoundError)
    keys = {
        o["Key"]
        for o in s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="unit-many/")["Contents"]
    }
    assert keys == {f"unit-many/cd/1.2/1.2.{i}.dcm" for i in range(10)}


async def test_large_object_goes_up_in_parts(
    aws_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    store = store_at(s3_endpoint, tmp_path, "unit-multipart", part_size=5 << 20)
    src = tmp_path / "big.dcm"
    data = random_file(src, (12 << 20) + 3)
    await store.put_file("ef/9.9/9.9.9.dcm", src)
    head = s3_client(s3_endpoint).head_object(Bucket=BUCKET, Key="unit-multipart/ef/9.9/9.9.9.dcm")
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of an object completed from 3 parts
    assert head["ContentLength"] == len(data)
    assert await store.read("ef/9.9/9.9.9.dcm", (5 << 20) - 2, 4) == data[(5 << 20) - 2 : (5 << 20) + 2]
    assert b"".join([p async for p in store.chunks("ef/9.9/9.9.9.dcm")]) == data


class FailingParts(BaseHTTPRequestHandler):
    """A proxy in front of the S3 server that answers 500 to every part after the first of a multipart
    upload (the service failing midway), and forwards everything else."""

    upstream = ("127.0.0.1", 0)
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if "partNumber=" in self.path and "partNumber=1&" not in self.path + "&":
            self.send_response(500)
            payload = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        answer = conn.getresponse()
        payload = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args: object) -> None:
        pass


async def test_failed_upload_leaves_no_object(
    aws_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    handler = type("Handler", (FailingParts,), {"upstream": (host, int(port))})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        store = store_at(
            f"http://127.0.0.1:{proxy.server_address[1]}", tmp_path, "unit-failed", part_size=5 << 20
        )
        src = tmp_path / "big.dcm"
        random_file(src, 11 << 20)
        results = await store.put_files([("aa/1.5/1.5.1.dcm", src)])
        assert isinstance(results[0], Exception)
    finally:
        proxy.shutdown()
        proxy.server_close()
    s3 = s3_client(s3_endpoint)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="unit-failed/")
    # Nor an upload left open (parts the bucket would keep, and bill, until a lifecycle rule removes them).
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="unit-failed/").get("Uploads", [])
    assert uploads == []
    # (The listing does show an open upload: this check can fail.)
    opened = s3.create_multipart_upload(Bucket=BUCKET, Key="unit-open/x")["UploadId"]
    assert len(s3.list_multipart_uploads(Bucket=BUCKET, Prefix="unit-open/").get("Uploads", [])) == 1
    s3.abort_multipart_upload(Bucket=BUCKET, Key="unit-open/x", UploadId=opened)


def test_keys_are_checked() -> None:
    assert check_key("ab/1.2/1.2.3.1f.dcm")
    for bad in ("", "/abs", "a/../b", "a//b", "./a", ".."):
        with pytest.raises(ValueError):
            check_key(bad)


# ---- the server on S3: start-up checks and readiness --------------------------------------------------


def serve(data: Path, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb", "serve", "--port", str(free_port()), "--data", str(data)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint", "malformed URL"])
def test_bad_blob_store_stops_serve_with_one_line(case: str, s3_endpoint: str, tmp_path: Path) -> None:
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint, "DICOMWEB_BLOB_URL": f"s3://{BUCKET}/x"}
    if case == "missing bucket":
        env["DICOMWEB_BLOB_URL"] = "s3://no-such-bucket/x"
    elif case == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    else:
        env["DICOMWEB_BLOB_URL"] = "s3://Bad_Bucket/x"
    done = serve(tmp_path / "data", env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == (2 if case == "malformed URL" else 1), done.stderr
    assert len(lines) == 1, done.stderr
    expected = {
        "missing bucket": "no such bucket",
        "unreachable endpoint": "cannot connect",
        "malformed URL": "not an S3 bucket name",
    }[case]
    assert expected in lines[0]


def test_wrong_credentials_stop_serve(tmp_path: Path) -> None:
    """An S3 server that checks signatures (moto with IAM enforced from the first request) refuses keys
    it does not know: the server says so at start, in one line."""
    base = tmp_path / "auth-s3"
    base.mkdir()
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with (base / "log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                import time

                time.sleep(0.1)
        done = serve(
            tmp_path / "data",
            {
                **S3_CREDENTIALS,
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "DICOMWEB_BLOB_URL": f"s3://{BUCKET}/x",
            },
        )
    finally:
        kill_group(proc.pid)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "cannot use the blob store" in line and "InvalidAccessKeyId" in line, line


def test_readiness_follows_the_bucket(tmp_path: Path) -> None:
    """On S3: /readyz is 200 while the bucket answers and 503 (with the reason) once it does not, while
    /healthz (liveness) stays 200; frames, masters and verify work from the bucket."""
    base = tmp_path / "s3"
    endpoint, proc = start_s3_server(base)
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "DICOMWEB_BLOB_URL": f"s3://{BUCKET}/ready"}
    server = Server(tmp_path / "data", env)
    try:
        with httpx.Client(base_url=server.root, timeout=60) as client:
            assert httpx.get(f"{server.base}/readyz").status_code == 200
            data = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
            assert stow(client, [data]).status_code == 200
            wait_for_masters(client)
            listed = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix="ready/")["Contents"]
            keys = [o["Key"] for o in listed if "/_readiness/" not in o["Key"]]
            # The master and (for DELETE_GRACE_SECONDS, for requests that already looked it up) the received
            # object.
            assert 1 <= len(keys) <= 2 and all(k.endswith(".dcm") for k in keys)
            verify = subprocess.run(
                [sys.executable, "-m", "dicomweb", "verify", "--quiet", "--data", str(tmp_path / "data")],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            assert verify.returncode == 0 and "1 master(s) decoded bit-exact" in verify.stdout, verify.stdout
            kill_group(proc.pid)
            r = httpx.get(f"{server.base}/readyz", timeout=30)
            assert r.status_code == 503 and "blob store unreachable" in r.text, r.text
            assert httpx.get(f"{server.base}/healthz").status_code == 200
    finally:
        server.stop()
        kill_group(proc.pid)
