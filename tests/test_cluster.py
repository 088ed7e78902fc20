"""The cluster (bench/cluster.py): PostgreSQL, moto's S3 server, two replicas, HAProxy in front.

Any request may reach any replica; a replica killed with SIGKILL while it stores and makes masters loses
nothing acknowledged, shows nothing half-written, and the other finishes its jobs; `dicomweb verify`
passes on the bucket afterwards.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import boto3
import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from bench.cluster import BUCKET, PREFIX, S3_CREDENTIALS, Cluster
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, multipart_body, new_uids, parse_multipart, stow

CT = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
JPEG_LOSSY = (PYDICOM_TEST_FILES / "JPEG-lossy.dcm").read_bytes()


def bucket_keys(cluster: Cluster, contains: str = "") -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        keys += [o["Key"] for o in page.get("Contents", []) if contains in o["Key"]]
    return keys


def series_of(study: str, n: int, **attrs: str) -> tuple[str, list[bytes]]:
    series = generate_uid()
    return series, [
        new_uids(CT, study=study, series=series, InstanceNumber=str(i + 1), **attrs) for i in range(n)
    ]


def pending(client: httpx.Client) -> int:
    return int(client.get("/status").json()["pending_masters"])


def test_replicas_and_balancer_are_ready(cluster: Cluster) -> None:
    for node in cluster.nodes:
        r = httpx.get(f"{node.base}/readyz")
        assert r.status_code == 200 and r.text.strip() == "ready"
    assert httpx.get(f"{cluster.url}/readyz").status_code == 200
    assert all(state.startswith("UP") for state in cluster.backend_states().values())


def test_stored_on_one_replica_is_visible_on_the_other_at_once(cluster: Cluster) -> None:
    one, two = (httpx.Client(base_url=f"{n.base}/dicom-web", timeout=60) for n in cluster.nodes)
    study = generate_uid()
    series, files = series_of(study, 3, PatientID="CLUSTER-1")
    assert stow(one, files).status_code == 200
    # No wait: the index is shared, and nothing either replica keeps for itself is asked.
    found = two.get("/studies", params={"PatientID": "CLUSTER-1"}).json()
    assert len(found) == 1 and found[0]["00201208"]["Value"] == [3]
    assert len(two.get(f"/studies/{study}/series/{series}/metadata").json()) == 3
    ds = pydicom.dcmread(io.BytesIO(files[1]))
    url = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
    frame = two.get(url + "/frames/1", headers={"Accept": "application/octet-stream"})
    assert frame.status_code == 200
    assert np.array_equal(
        np.frombuffer(frame.content, dtype=ds.pixel_array.dtype).reshape(ds.pixel_array.shape), ds.pixel_array
    )
    # Deleted through one, gone from the other.
    assert one.delete(url).status_code == 204
    assert two.get(url + "/metadata").status_code == 404
    assert two.get(url + "/frames/1").status_code == 404
    one.close()
    two.close()


def test_same_instance_twice_keeps_one_object(cluster: Cluster) -> None:
    """Stored twice (once through each replica): one index row and one object in the bucket. (A lossy
    original, kept as received: no master replaces the object meanwhile.)"""
    data = new_uids(JPEG_LOSSY)
    ds = pydicom.dcmread(io.BytesIO(data))
    for node in cluster.nodes:
        with httpx.Client(base_url=f"{node.base}/dicom-web", timeout=60) as c:
            assert stow(c, [data]).status_code == 200
    with httpx.Client(base_url=cluster.root, timeout=60) as c:
        assert len(c.get(f"/studies/{ds.StudyInstanceUID}/instances").json()) == 1
    assert len(bucket_keys(cluster, f"/{ds.SOPInstanceUID}.")) == 1


def test_concurrent_stow_of_one_new_study_to_both_replicas(cluster: Cluster) -> None:
    """Both replicas store instances of the same new study and series at the same moment, the same SOP
    Instances among them: no error, exact counts, one row and one object per instance."""
    study, series = generate_uid(), generate_uid()
    shared = [new_uids(JPEG_LOSSY, study=study, series=series, InstanceNumber=str(i)) for i in range(4)]
    own = [
        [new_uids(JPEG_LOSSY, study=study, series=series, InstanceNumber=str(10 * n + i)) for i in range(6)]
        for n in (1, 2)
    ]
    start = threading.Barrier(len(cluster.nodes) * 3)
    statuses: list[int] = []

    def upload(node_base: str, files: list[bytes]) -> None:
        with httpx.Client(base_url=f"{node_base}/dicom-web", timeout=120) as c:
            start.wait()
            statuses.append(stow(c, files).status_code)

    threads = [
        threading.Thread(target=upload, args=(node.base, files))
        for node, mine in zip(cluster.nodes, own, strict=True)
        for files in (mine[:3], mine[3:], shared)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(threads)
    with httpx.Client(base_url=cluster.root, timeout=60) as c:
        [found] = c.get("/studies", params={"StudyInstanceUID": study}).json()
        assert found["00201208"]["Value"] == [16] and found["00201206"]["Value"] == [1]
        [row] = c.get(f"/studies/{study}/series").json()
        assert row["00201209"]["Value"] == [16]
        assert len(c.get(f"/studies/{study}/instances").json()) == 16
    for data in shared:
        sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        assert len(bucket_keys(cluster, f"/{sop}.")) == 1


def test_replica_killed_during_ingest_and_masters(cluster: Cluster) -> None:
    victim = cluster.nodes[0]
    study = generate_uid()
    first_series, first = series_of(study, 24, PatientID="CLUSTER-KILL")
    with httpx.Client(base_url=f"{victim.base}/dicom-web", timeout=120) as c:
        assert stow(c, first).status_code == 200  # acknowledged: must survive
        assert pending(c) > 0  # the victim's masters are in the making
    # A second upload to the victim, killed while it is in progress (or just after it was answered).
    second_series, second = series_of(study, 24, PatientID="CLUSTER-KILL")
    answer: dict[str, object] = {}

    def upload() -> None:
        try:
            with httpx.Client(base_url=f"{victim.base}/dicom-web", timeout=120) as c:
                answer["status"] = stow(c, second).status_code
        except httpx.HTTPError as exc:
            answer["error"] = exc

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.3)
    cluster.kill_replica(0)
    thread.join(60)
    try:
        with httpx.Client(base_url=cluster.root, timeout=120) as c:
            # Right after the kill the balancer sends every request to the survivor (a refused
            # connection is redispatched), before its health check even marked the victim down.
            for _ in range(6):
                assert c.get("/studies", params={"PatientID": "CLUSTER-KILL"}).status_code == 200
            cluster.wait_balanced()
            # The survivor takes over every job (the victim's included) and finishes them.
            deadline = time.monotonic() + 300
            while pending(c) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert pending(c) == 0
            instances = c.get(f"/studies/{study}/instances", params={"limit": "1000"}).json()
            sops = {i["00080018"]["Value"][0] for i in instances}
            first_sops = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in first}
            assert first_sops <= sops  # nothing acknowledged is lost
            if answer.get("status") == 200:
                assert len(sops) == 48
            # Nothing half-written: every instance the index shows is whole, with its pixels.
            originals = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in first + second}
            for inst in instances:
                sop, series = inst["00080018"]["Value"][0], inst["0020000E"]["Value"][0]
                r = c.get(
                    f"/studies/{study}/series/{series}/instances/{sop}",
                    headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                )
                assert r.status_code == 200, r.text
                (part,) = parse_multipart(r)
                got = pydicom.dcmread(io.BytesIO(part[1]))
                assert np.array_equal(
                    got.pixel_array, pydicom.dcmread(io.BytesIO(originals[sop])).pixel_array
                )
                assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # its master
        verify = subprocess.run(
            [sys.executable, "-m", "dicomweb", "verify", "--quiet", "--data", str(cluster.base / "verify")],
            env=cluster.replica_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "0 problem(s)" in verify.stdout and "0 waiting for a master" in verify.stdout
    finally:
        cluster.start_replica(0)
        cluster.wait_balanced()
    assert first_series != second_series


def test_stow_through_the_balancer_is_visible_on_each_replica(cluster: Cluster) -> None:
    """Uploads through HAProxy (round robin: half to each replica) are all visible on each replica."""
    study = generate_uid()
    files = [new_uids(CT, study=study, PatientID="CLUSTER-RR") for _ in range(8)]
    with httpx.Client(base_url=cluster.root, timeout=120) as c:
        for data in files:
            r = c.post(
                "/studies",
                content=multipart_body([data]),
                headers={
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=test-boundary-1234'
                },
            )
            assert r.status_code == 200
    for node in cluster.nodes:
        with httpx.Client(base_url=f"{node.base}/dicom-web", timeout=60) as c:
            assert len(c.get(f"/studies/{study}/instances").json()) == 8
