"""Lifecycle policies (issue 16): strict parsing, rule matching, SSIM, and, on a real server over HTTP
with real DICOM, a dry run and its application by `dicomweb lifecycle --apply`: derived instances in the
originals' places, labelled, within the rule's limits, QA recorded, 301 redirects, lossy inputs and
instances without a master untouched; and a lifecycle run killed (SIGKILL) again and again, then resumed."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from storage.codec import decode
from storage.lifecycle.policy import PolicyError, StudyFacts, first_match, parse_policy
from storage.lifecycle.qa import ssim
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, new_uids, stow, wait_for_masters
from tests.test_cli import run as cli
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster

J2K, J2K_LOSSLESS = "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90"
DAY = 86400.0


# ---- the policy file ---------------------------------------------------------------------------------

GOOD = """
[[rule]]
name = "first"
modality = ["CT"]
action = "lossy"
max_ratio = 8
"""


@pytest.mark.parametrize(
    ("second", "key", "why"),
    [
        ('action = "lossy"\nmax_ratio = 8\ncolour = "red"', "colour", "unknown key"),
        ('action = "lossy"\nmax_ratio = "8"', "max_ratio", "must be a number"),
        ('action = "lossy"\nmax_error = 2.5', "max_error", "must be an integer"),
        ('action = "lossy"\nmodality = "CT"\nmax_ratio = 8', "modality", "list of strings"),
        ("max_ratio = 8", "action", "missing"),
        ('action = "shred"', "action", '"lossy" or "tier"'),
        ('action = "lossy"', "max_ratio", "at least one of"),
        ('action = "lossy"\nmax_ratio = 8\nolder_than_days = -1', "older_than_days", "negative"),
        ('action = "tier"\nmax_ratio = 8', "max_ratio", "only a lossy rule"),
        ('action = "lossy"\nmin_psnr_db = true', "min_psnr_db", "must be a number"),
    ],
)
def test_policy_errors_name_the_rule_and_the_key(second: str, key: str, why: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(GOOD + '\n[[rule]]\nname = "second"\n' + second + "\n")
    message = str(caught.value)
    assert message.startswith("rule 2 ('second'): " + key), message
    assert why in message, message


def test_policy_parses_into_frozen_rules() -> None:
    policy = parse_policy(GOOD, name="p.toml")
    [rule] = policy.rules
    assert (rule.index, rule.name, rule.action, rule.modality, rule.max_ratio) == (
        1,
        "first",
        "lossy",
        {"CT"},
        8.0,
    )
    with pytest.raises(AttributeError):
        rule.max_ratio = 100  # type: ignore[misc]
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("[[rule]\n")


def test_example_policy_is_valid() -> None:
    from storage.lifecycle import load_policy

    policy = load_policy(Path(__file__).parent.parent / "deploy" / "lifecycle-example.toml")
    caps = {r.name.split(" older")[0]: r.max_ratio for r in policy.rules}
    assert caps == {"CT brain": 5, "CT": 8, "CR and DX": 10, "MG": 15, "MR": 7, "XA and RF": 6}
    assert all(r.max_error is not None and r.older_than_days == 730 for r in policy.rules)


def test_first_matching_rule_wins() -> None:
    policy = parse_policy(
        """
[[rule]]
name = "brain"
modality = ["CT"]
body_part = ["head", "BRAIN"]
action = "lossy"
max_ratio = 5
[[rule]]
name = "old CT unread"
modality = ["CT", "MR"]
older_than_days = 365
not_accessed_days = 90
action = "lossy"
max_ratio = 8
[[rule]]
name = "anything"
action = "tier"
"""
    )
    now = time.time()

    def facts(
        mods: set[str],
        parts: frozenset[str] = frozenset(),
        date: str = "",
        received: float = now,
        read: float = 0.0,
    ):
        return StudyFacts("1.2", frozenset(mods), frozenset(parts), date, received, read)

    def rule(f: StudyFacts) -> str | None:
        found = first_match(policy, f, now)
        return None if found is None else found.name

    assert rule(facts({"CT", "SR"}, {"HEAD"})) == "brain"  # any overlap, case-insensitive body part
    assert rule(facts({"MR"}, date="20000101")) == "old CT unread"  # StudyDate first
    assert rule(facts({"MR"}, date="", received=now - 400 * DAY)) == "old CT unread"  # else receipt
    assert rule(facts({"MR"}, date="", received=now - 10 * DAY)) == "anything"
    assert rule(facts({"MR"}, date="20000101", read=now - 10 * DAY)) == "anything"  # read lately
    assert rule(facts({"MR"}, date="20000101", read=now - 100 * DAY)) == "old CT unread"
    assert (
        first_match(policy, facts({"MR"}, received=now), now, ignore_study_date=True).name == "old CT unread"
    )


# ---- SSIM ----------------------------------------------------------------------------------------------


def naive_ssim(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    """SSIM window by window, straight from Wang et al. (2004), with numpy's own statistics."""
    peak = (1 << bits) - 1
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    values = []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            a = x[i : i + 7, j : j + 7].astype(np.float64).ravel()
            b = y[i : i + 7, j : j + 7].astype(np.float64).ravel()
            cov = np.cov(a, b)  # sample covariance (N - 1)
            values.append(
                ((2 * a.mean() * b.mean() + c1) * (2 * cov[0, 1] + c2))
                / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
            )
    return float(np.mean(values))


def test_ssim_properties_and_reference() -> None:
    rng = np.random.default_rng(7)
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    image = ds.pixel_array[:40, :48]
    assert ssim(image, image, 16) == 1.0
    previous = 1.0
    for sigma in (20, 200, 2000):
        noisy = np.clip(image + rng.normal(0, sigma, image.shape), -32768, 32767).astype(image.dtype)
        value = ssim(image, noisy, 16)
        assert value < previous
        assert math.isclose(value, naive_ssim(image, noisy, 16), rel_tol=1e-9, abs_tol=1e-12)
        previous = value
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return
    noisy = np.clip(image + rng.normal(0, 200, image.shape), -32768, 32767).astype(image.dtype)
    reference = structural_similarity(image, noisy, data_range=(1 << 16) - 1)
    assert math.isclose(ssim(image, noisy, 16), reference, rel_tol=1e-6)


# ---- on a real server ------------------------------------------------------------------------------------

POLICY = """
[[rule]]
name = "CT"
modality = ["CT"]
action = "lossy"
max_ratio = 10
max_error = 120

[[rule]]
name = "MR"
modality = ["MR"]
action = "lossy"
min_psnr_db = 60
max_error = 200
"""


class Study:
    """Sent by STOW-RS; remembers each instance's original pixels and URL."""

    def __init__(self, client: httpx.Client, files: list[bytes]) -> None:
        assert stow(client, files).status_code == 200
        self.datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
        self.files = files
        self.uid = self.datasets[0].StudyInstanceUID

    def url(self, ds: pydicom.Dataset, sop: str | None = None) -> str:
        series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        return f"{series}/instances/{sop or ds.SOPInstanceUID}"


@pytest.fixture(scope="module")
def lifecycle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("lifecycle")
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    srv = Server(
        root / "data", {"DICOMWEB_LIFECYCLE": str(policy), "DICOMWEB_AUDIT_LOG": str(root / "audit.jsonl")}
    )
    yield srv, policy
    srv.stop()


@pytest.fixture(scope="module")
def applied(lifecycle_server: tuple[Server, Path]) -> Iterator[dict]:
    srv, policy = lifecycle_server
    with httpx.Client(base_url=srv.root, timeout=120) as client:
        study = generate_uid()
        ct = new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes(), study=study)
        small = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes(), study=study)
        # In the CT study too, so the CT rule matches them: a lossy input, and an instance with no pixels.
        lossy = new_uids((PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes(), study=study)
        plan = new_uids((PYDICOM_TEST_FILES / "rtplan.dcm").read_bytes(), study=study)
        mr = new_uids((PYDICOM_DATA / "MR2_UNCR.dcm").read_bytes(), study=generate_uid())
        ct_study = Study(client, [ct, small, lossy, plan])
        mr_study = Study(client, [mr])
        wait_for_masters(client)
        ladders = {
            ds.SOPInstanceUID: client.get(ct_study.url(ds) + "/layers").json()["frames"][0]["layers"]
            for ds in ct_study.datasets[:2] + mr_study.datasets
        }
        before = client.get("/lifecycle").json()
        audit = {"DICOMWEB_AUDIT_LOG": str(srv.data_dir.parent / "audit.jsonl")}
        done = cli(
            "lifecycle",
            "--apply",
            "--json",
            "--quiet",
            "--data",
            str(srv.data_dir),
            "--policy",
            str(policy),
            env=audit,
        )
        assert done.returncode == 0, done.stderr
        yield {
            "client": client,
            "server": srv,
            "ct": ct_study,
            "mr": mr_study,
            "ladders": ladders,
            "dry_run": before,
            "result": json.loads(done.stdout),
            "after": client.get("/lifecycle").json(),
        }


def successor(client: httpx.Client, study: Study, ds: pydicom.Dataset) -> str | None:
    r = client.get(study.url(ds) + "/metadata")
    if r.status_code == 200:
        return None
    assert r.status_code == 301, r.text
    return r.headers["location"].split("/instances/")[1].split("/")[0]


def test_dry_run_shape_and_figures(applied: dict) -> None:
    dry = applied["dry_run"]
    assert dry["policy"] == "policy.toml" and dry["currency"] == "USD"
    ct, mr = dry["rules"]
    assert (ct["name"], ct["action"], mr["name"]) == ("CT", "lossy", "MR")
    # The CT study: its two CT masters; never the lossy input nor the plan without pixels.
    assert ct["studies"] == 1 and ct["instances"] == 2
    assert mr["studies"] == 1 and mr["instances"] == 1
    for r in (ct, mr):
        assert r["saving_bytes"] == r["bytes_now"] - r["bytes_after"] > 0
        assert math.isclose(r["saving_per_month"], r["saving_bytes"] / 1e12 * 23.0)
    assert ct["worst_max_error"] <= 120 and mr["worst_psnr_db"] >= 60
    # Nothing left to do afterwards: the rerun of the plan is empty (resumable = idempotent).
    assert [r["instances"] for r in applied["after"]["rules"]] == [0, 0]


def test_apply_does_what_the_dry_run_said(applied: dict) -> None:
    dry, result = applied["dry_run"]["rules"], applied["result"]
    assert result["derived"] == sum(r["instances"] for r in dry) and result["skipped"] == 0
    assert result["bytes_before"] == sum(r["bytes_now"] for r in dry)
    # The derived files gain a few hundred bytes of labels the estimate leaves out.
    assert 0 <= result["bytes_after"] - sum(r["bytes_after"] for r in dry) <= 2048 * result["derived"]
    client = applied["client"]
    qa = {s["study"]: s for s in client.get("/lifecycle/qa").json()["studies"]}
    for rule, study in zip(dry, (applied["ct"], applied["mr"]), strict=True):
        assert qa[study.uid]["worst_max_error"] == rule["worst_max_error"]
        assert math.isclose(qa[study.uid]["worst_psnr_db"], rule["worst_psnr_db"], abs_tol=0.01)


def test_derived_instances_are_labelled_and_within_limits(applied: dict) -> None:
    client = applied["client"]
    for study, limit in ((applied["ct"], 120), (applied["mr"], 200)):
        for ds in study.datasets:
            if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1":
                continue
            new = successor(client, study, ds)
            assert new is not None and new != ds.SOPInstanceUID
            r = client.get(
                study.url(ds, new),
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            )
            assert r.status_code == 200
            body = r.content
            derived = pydicom.dcmread(io.BytesIO(body[body.index(b"DICM") - 128 :]))
            assert derived.file_meta.TransferSyntaxUID == J2K
            assert derived.file_meta.MediaStorageSOPInstanceUID == new == derived.SOPInstanceUID
            assert (derived.StudyInstanceUID, derived.SeriesInstanceUID) == (
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
            )
            assert derived.LossyImageCompression == "01"
            assert derived.LossyImageCompressionMethod == "ISO_15444_1"
            assert float(derived.LossyImageCompressionRatio) > 1
            assert derived.ImageType[0] == "DERIVED"
            assert "quality layers" in derived.DerivationDescription
            # Appended to whatever the original held.
            assert len(derived.DerivationCodeSequence) == len(ds.get("DerivationCodeSequence", [])) + 1
            code = derived.DerivationCodeSequence[-1]
            assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
                "113040",
                "DCM",
                "Lossy Compression",
            )
            assert len(derived.SourceImageSequence) == len(ds.get("SourceImageSequence", [])) + 1
            source = derived.SourceImageSequence[-1]
            assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID
            assert source.ReferencedSOPClassUID == ds.SOPClassUID
            [purpose] = source.PurposeOfReferenceCodeSequence
            assert (purpose.CodeValue, purpose.CodeMeaning) == ("121320", "Uncompressed predecessor")
            meta = client.get(study.url(ds, new) + "/metadata").json()[0]
            assert meta["00282110"]["Value"] == ["01"]
            # Frames say what they are: the derived instance's whole frame is lossy JPEG 2000.
            r = client.get(study.url(ds, new) + "/frames/1", headers={"Accept": "image/jp2"})
            assert r.headers["content-type"] == f"image/jp2; transfer-syntax={J2K}"
            # The pixels: decoded and compared with the original's, within the rule's maximum error.
            [frame] = list(generate_frames(derived.PixelData, number_of_frames=1))
            error = int(np.abs(decode(frame).astype(np.int32) - ds.pixel_array.astype(np.int32)).max())
            assert 0 < error <= limit
            qa = client.get(f"/studies/{study.uid}/qa").json()["frames"]
            [row] = [q for q in qa if q["instance"] == new]
            assert row["max_error"] == error and row["original"] == ds.SOPInstanceUID
            assert 0 < row["ssim"] < 1
            # The QA measured at derivation equals the ladder measured at ingest for those layers.
            step = applied["ladders"][ds.SOPInstanceUID][row["layers"] - 1]
            assert (row["max_error"], row["bytes"]) == (step["max_error"], step["bytes"])
            assert math.isclose(row["psnr_db"], step["psnr"], abs_tol=1e-3)
            # The fewest layers that meet the rule: one layer fewer would not.
            layers = client.get(study.url(ds, new) + "/layers").json()["frames"][0]["layers"]
            assert len(layers) == row["layers"] and not layers[-1]["lossless"]


def test_qido_shows_the_derived_in_the_originals_place(applied: dict) -> None:
    client = applied["client"]
    study = applied["ct"]
    found = {i["00080018"]["Value"][0]: i for i in client.get(f"/studies/{study.uid}/instances").json()}
    assert len(found) == 4
    ct, small, lossy, plan = study.datasets
    for ds in (ct, small):
        assert ds.SOPInstanceUID not in found
        assert successor(client, study, ds) in found
    # Untouched: the lossy input and the instance without pixel data are there as they were.
    for ds in (lossy, plan):
        assert ds.SOPInstanceUID in found and successor(client, study, ds) is None
    r = client.get(f"/studies/{study.uid}")
    assert r.status_code == 200
    studies = client.get("/studies", params={"StudyInstanceUID": study.uid}).json()
    assert studies[0]["00201208"]["Value"] == [4]


RESOURCES = [
    "",
    "/metadata",
    "/frames/1",
    "/frames/1?layers=1",
    "/rendered?quality=50",
    "/frames/1/rendered",
    "/thumbnail",
    "/frames/1/thumbnail",
    "/bulkdata/7FE00010",
    "/layers",
]


@pytest.mark.parametrize("tail", RESOURCES)
def test_every_resource_of_the_original_redirects(applied: dict, tail: str) -> None:
    client = applied["client"]
    study = applied["mr"]
    [ds] = study.datasets
    new = successor(client, study, ds)
    # A cut is only sent compressed (image/jp2), whichever instance it is cut from.
    headers = {"Accept": "image/jp2"} if "layers=" in tail else {}
    r = client.get(study.url(ds) + tail, headers=headers)
    assert r.status_code == 301
    assert r.headers["location"] == f"/dicom-web{study.url(ds, new)}{tail}"
    assert client.get(r.headers["location"].removeprefix("/dicom-web"), headers=headers).status_code == 200


def test_qa_command_and_audit(applied: dict) -> None:
    srv = applied["server"]
    study = applied["ct"]
    done = cli("qa", study.uid, "--data", str(srv.data_dir))
    assert done.returncode == 0, done.stderr
    assert "2 derived instance(s)" in done.stdout and "SSIM" in done.stdout
    lines = [
        json.loads(line) for line in (srv.data_dir.parent / "audit.jsonl").read_text().splitlines() if line
    ]
    changes = [line for line in lines if line["action"] == "lifecycle"]
    assert {c["change"]["original"] for c in changes} >= {ds.SOPInstanceUID for ds in study.datasets[:2]}
    assert all(c["event_action"] == "U" and c["change"]["action"] == "derived" for c in changes)
    assert applied["client"].get("/lifecycle/qa", params={"limit": "0"}).status_code == 400


def test_tier_rule_dry_run_figures(applied: dict, tmp_path: Path) -> None:
    srv = applied["server"]
    policy = tmp_path / "tier.toml"
    policy.write_text('[[rule]]\nname = "all to cold"\naction = "tier"\n')
    done = cli("lifecycle", "--json", "--data", str(srv.data_dir), "--policy", str(policy))
    assert done.returncode == 0, done.stderr
    [rule] = json.loads(done.stdout)["rules"]
    assert rule["studies"] == 2 and rule["instances"] == 5
    assert rule["bytes_after"] == rule["bytes_now"] > 0 and rule["worst_psnr_db"] is None
    assert math.isclose(rule["saving_per_month"], rule["bytes_now"] / 1e12 * (23.0 - 4.0))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\naction = "lossy"\n')
    done = cli("lifecycle", "--data", str(srv.data_dir), "--policy", str(bad))
    assert (
        done.returncode == 1 and "rule 1 ('x'): max_ratio" in done.stderr and "Traceback" not in done.stderr
    )


def test_stow_of_the_original_again_stores_it_and_ends_the_redirect(applied: dict) -> None:
    # Last in this module: it brings an original back.
    client = applied["client"]
    study = applied["mr"]
    [ds] = study.datasets
    new = successor(client, study, ds)
    assert stow(client, study.files).status_code == 200
    assert client.get(study.url(ds) + "/metadata").status_code == 200
    assert client.get(study.url(ds, new) + "/metadata").status_code == 200  # the derived copy stays


# ---- SIGKILL at any moment --------------------------------------------------------------------------------


def test_killed_apply_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    base = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    for i in range(6):
        study = generate_uid()
        for j in range(30):
            (source / f"{i}-{j}.dcm").write_bytes(new_uids(base, study=study))
    data = tmp_path / "data"
    done = cli("import", str(source), "--data", str(data), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "CT"\naction = "lossy"\nmax_ratio = 10\nmax_error = 70\n')
    db = data / "index.sqlite"
    with sqlite3.connect(db) as conn:
        originals = {r[0] for r in conn.execute("SELECT sop_uid FROM instances")}
    assert len(originals) == 180
    rng = random.Random(16)
    command = [
        sys.executable,
        "-m",
        "dicomweb",
        "lifecycle",
        "--apply",
        "--quiet",
        "--data",
        str(data),
        "--policy",
        str(policy),
    ]
    # How long a whole run takes here, timed on a copy: the kills land within that time, on any machine.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    started = time.monotonic()
    timed = subprocess.run([*command[:-4], "--data", str(copy), *command[-2:]], check=False, timeout=600)
    assert timed.returncode == 0
    whole = time.monotonic() - started
    progress: list[int] = []
    for _ in range(5):
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(rng.uniform(0.3, 0.9) * whole)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        progress.append(check_swap_state(db, data, originals, finished=False))
    done = cli("lifecycle", "--apply", "--json", "--quiet", "--data", str(data), "--policy", str(policy))
    assert done.returncode == 0, done.stderr
    print("derived after each kill:", progress)
    # The kills landed while instances were being derived, not only before or after.
    assert any(0 < n < len(originals) for n in progress), progress
    assert check_swap_state(db, data, originals, finished=True) == len(originals)


def check_swap_state(db: Path, data: Path, originals: set[str], *, finished: bool) -> int:
    """Check the invariants after a kill; how many originals have been replaced."""
    with sqlite3.connect(db) as conn:
        present = {r[0]: r[1] for r in conn.execute("SELECT sop_uid, blob_key FROM instances")}
        successors = dict(conn.execute("SELECT sop_uid, successor_uid FROM instance_successors").fetchall())
        trash = conn.execute("SELECT count(*) FROM blob_trash").fetchone()[0]
        counts = conn.execute("SELECT sum(num_instances) FROM studies").fetchone()[0]
    assert counts == len(originals) == len(present)
    for sop in originals:
        # Exactly one of the two visible: the original, or its derived copy.
        derived = successors.get(sop)
        assert (sop in present) != (derived is not None and derived in present), sop
        if finished:
            assert derived in present
    for key in present.values():
        assert (data / "blobs" / key).is_file(), key
    if finished:
        assert trash == 0
    return sum(1 for sop in originals if successors.get(sop) in present)


# ---- on a schedule -----------------------------------------------------------------------------------------


def test_server_applies_the_policy_on_its_schedule(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    audit = tmp_path / "audit.jsonl"
    data = tmp_path / "data"
    data.mkdir()
    srv = Server(
        data,
        {
            "DICOMWEB_LIFECYCLE": str(policy),
            "DICOMWEB_LIFECYCLE_INTERVAL": "1",
            "DICOMWEB_AUDIT_LOG": str(audit),
        },
    )
    try:
        with httpx.Client(base_url=srv.root, timeout=120) as client:
            study = Study(client, [new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes())])
            [ds] = study.datasets
            deadline = time.time() + 120
            new = None
            while new is None and time.time() < deadline:
                new = successor(client, study, ds)
                time.sleep(0.5)
            assert new is not None, "the scheduled run derived nothing in 120 s"
            derived = client.get(study.url(ds, new) + "/metadata").json()[0]
            assert derived["00282110"]["Value"] == ["01"]  # Lossy Image Compression
        # The audit log is written by a background flusher: wait for the line.
        changes: list[dict] = []
        deadline = time.time() + 30
        while not changes and time.time() < deadline:
            time.sleep(0.2)
            lines = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
            changes = [line for line in lines if line.get("action") == "lifecycle"]
        assert [c["change"]["original"] for c in changes] == [ds.SOPInstanceUID]
    finally:
        srv.stop()


async def test_one_replica_at_a_time_on_postgresql(tmp_path: Path, postgres: str) -> None:  # noqa: F811
    """A replica that does not get the advisory lock skips its round; once released, it runs."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage import Archive, Settings
    from storage.lifecycle.schedule import LOCK_KEY, run_once
    from tests.index_helpers import new_postgres_database

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    url = await new_postgres_database(postgres)
    archive = Archive(Settings(data_dir=tmp_path / "data", database_url=url))
    await archive.open(start_masters=False, parser_processes=1)
    other = create_async_engine(url)
    try:
        async with other.connect() as conn:
            assert await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
            assert await run_once(archive, str(policy)) is False
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        assert await run_once(archive, str(policy)) is True
    finally:
        await other.dispose()
        await archive.close()
