"""Storage economics (issue 16): `GET {root}/stats` and `dicomweb stats` against what was really stored.

Real DICOM files (pydicom's and WG04's) imported with the real CLI, then served by the real server over
HTTP; the figures are checked against the files themselves (received bytes = file sizes, uncompressed =
Rows x Columns x Samples x Bits Allocated / 8 x frames) and against the stored instances retrieved as
stored (stored bytes, before and after the masters replaced the received files). The aggregate itself is
also run on SQLite and on PostgreSQL (the suite's temporary cluster) over an index with hot and cold rows.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from storage import Settings
from storage.index import Index
from storage.stats import TB, storage_stats
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, new_uids, wait_for_masters
from tests.index_helpers import make_instance, new_postgres_database, stored
from tests.test_cli import run
from tests.test_postgres import postgres  # noqa: F401 - the module's temporary cluster

PRICES = {
    "DICOMWEB_PRICE_PER_TB_MONTH": "30",
    "DICOMWEB_COLD_PRICE_PER_TB_MONTH": "5",
    "DICOMWEB_YEARLY_GROWTH_PERCENT": "10",
    "DICOMWEB_CURRENCY": "EUR",
}
INSTANCE = "application/dicom; transfer-syntax=*"


def dicomweb(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return run(*args, "--data", str(data), env=PRICES)


def month_now() -> str:
    return time.strftime("%Y-%m", time.gmtime())


def uncompressed(data: bytes) -> int:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    if "Rows" not in ds:
        return 0
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8 * frames


class Archive:
    """Four studies made from real files, imported with `dicomweb import --no-masters`:

    - A, StudyDate 2020-06-15: three CT slices (WG04 693_UNCR, uncompressed) and a structured report;
    - B, StudyDate 2019-01-02: an MR image (pydicom's MR_small);
    - C, no StudyDate: a CT image (pydicom's CT_small): counted in the month it was received;
    - D, a malformed StudyDate (ACR-NEMA's 2018.03.04): a JPEG baseline image (modality OT), a lossy
      original kept as received; also counted in the month it was received.
    """

    def __init__(self, folder: Path) -> None:
        self.study = {k: generate_uid() for k in "ABCD"}
        a_ct, a_sr = generate_uid(), generate_uid()
        ct = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
        self.files: dict[str, list[tuple[str, bytes]]] = {
            "A": [
                *(
                    ("CT", new_uids(ct, study=self.study["A"], series=a_ct, StudyDate="20200615"))
                    for _ in range(3)
                ),
                (
                    "SR",
                    new_uids(
                        (PYDICOM_TEST_FILES / "test-SR.dcm").read_bytes(),
                        study=self.study["A"],
                        series=a_sr,
                        StudyDate="20200615",
                    ),
                ),
            ],
            "B": [
                (
                    "MR",
                    new_uids(
                        (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes(),
                        study=self.study["B"],
                        StudyDate="20190102",
                    ),
                )
            ],
            "C": [
                (
                    "CT",
                    new_uids(
                        (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes(),
                        study=self.study["C"],
                        StudyDate="",
                    ),
                )
            ],
            "D": [
                (
                    "OT",
                    new_uids(
                        (PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes(),
                        study=self.study["D"],
                        StudyDate="2018.03.04",
                    ),
                )
            ],
        }
        self.folder = folder
        folder.mkdir(parents=True)
        for key, files in self.files.items():
            for i, (_, data) in enumerate(files):
                (folder / f"{key}{i}.dcm").write_bytes(data)

    def expected(self, by: str) -> dict[str, dict[str, int]]:
        """studies, instances, received and uncompressed bytes per modality, month or (modality, month)."""
        out: dict[Any, dict[str, Any]] = {}
        for key, files in self.files.items():
            month = {"A": "2020-06", "B": "2019-01"}.get(key, month_now())
            for modality, data in files:
                group = {"modality": modality, "month": month, "pair": (modality, month)}[by]
                figures = out.setdefault(
                    group, {"studies": set(), "instances": 0, "received": 0, "pixels": 0}
                )
                figures["studies"].add(key)
                figures["instances"] += 1
                figures["received"] += len(data)
                figures["pixels"] += uncompressed(data)
        return {k: {**v, "studies": len(v["studies"])} for k, v in out.items()}


def figures_of(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, int]]:
    return {
        (row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)): {
            "studies": row["studies"],
            "instances": row["instances"],
            "received": row["received_bytes"],
            "pixels": row["uncompressed_bytes"],
        }
        for row in rows
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return Archive(tmp_path_factory.mktemp("stats-files") / "files")


@pytest.fixture(scope="module")
def imported(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The data folder after `dicomweb import --no-masters`, and `dicomweb stats --json` then (no master
    has been made yet: every instance is stored as received)."""
    data = tmp_path_factory.mktemp("stats") / "data"
    done = dicomweb("import", str(archive.folder), "--no-masters", "--quiet", data=data)
    assert done.returncode == 0, done.stdout + done.stderr
    before = dicomweb("stats", "--json", data=data)
    assert before.returncode == 0, before.stderr
    return data, json.loads(before.stdout)


@pytest.fixture(scope="module")
def served(imported: tuple[Path, dict[str, Any]]) -> Iterator[tuple[Server, httpx.Client]]:
    """The same archive served; the server's queue makes the masters the import left to it."""
    data, _ = imported
    keys = {}
    for name, scopes in (("viewer", "read"), ("admin", "read,admin")):
        done = dicomweb("apikey", "create", name, "--scopes", scopes, data=data)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.splitlines()[0]
    srv = Server(data, PRICES)
    with httpx.Client(
        base_url=srv.root, timeout=60, headers={"Authorization": f"Bearer {keys['admin']}"}
    ) as client:
        client.keys = keys  # type: ignore[attr-defined]
        wait_for_masters(client)
        yield srv, client
    srv.stop()


def test_before_masters_stored_is_received(archive: Archive, imported: tuple[Path, dict[str, Any]]) -> None:
    _, before = imported
    total_received = sum(len(d) for files in archive.files.values() for _, d in files)
    totals = before["totals"]
    assert totals["received_bytes"] == total_received
    assert totals["stored_bytes"] == total_received  # no master yet: each file is stored as received
    assert totals["received_ratio"] == 1.0
    assert figures_of(before["by_modality"], "modality") == archive.expected("modality")
    assert figures_of(before["by_month"], "month") == archive.expected("month")


def test_figures_match_the_files_and_the_stored_instances(
    archive: Archive, served: tuple[Server, httpx.Client]
) -> None:
    _, client = served
    r = client.get("/stats")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert figures_of(doc["by_modality"], "modality") == archive.expected("modality")
    assert figures_of(doc["by_month"], "month") == archive.expected("month")
    assert figures_of(doc["by_modality_month"], "modality", "month") == archive.expected("pair")
    totals = doc["totals"]
    assert (totals["studies"], totals["instances"]) == (4, 7)
    # A's CT and SR series count as one study in their month; CT holds studies A and C.
    months = {row["month"]: row for row in doc["by_month"]}
    assert months["2020-06"]["studies"] == 1 and months["2020-06"]["instances"] == 4
    assert {row["modality"]: row["studies"] for row in doc["by_modality"]}["CT"] == 2

    # Stored bytes are the instances as stored now: retrieved as stored, per modality.
    stored_now: dict[str, int] = {}
    for study in archive.study.values():
        for inst in client.get(f"/studies/{study}/instances").json():
            series, sop = inst["0020000E"]["Value"][0], inst["00080018"]["Value"][0]
            got = client.get(
                f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": INSTANCE}
            )
            assert got.status_code == 200, got.text
            modality = pydicom.dcmread(io.BytesIO(got.content), stop_before_pixels=True).get("Modality", "")
            stored_now[modality] = stored_now.get(modality, 0) + len(got.content)
    by_modality = {row["modality"]: row for row in doc["by_modality"]}
    assert {m: row["stored_bytes"] for m, row in by_modality.items()} == stored_now
    assert totals["stored_bytes"] == sum(stored_now.values())
    # The masters replaced the uncompressed CT and MR files: stored is now smaller than received (WG04's CT
    # compresses losslessly about 2.5:1); the JPEG baseline original and the report are kept as received.
    assert by_modality["CT"]["stored_bytes"] < by_modality["CT"]["received_bytes"] / 2
    assert by_modality["MR"]["stored_bytes"] < by_modality["MR"]["received_bytes"]
    for kept in ("OT", "SR"):
        assert by_modality[kept]["stored_bytes"] == by_modality[kept]["received_bytes"]
    ct = by_modality["CT"]
    assert ct["received_ratio"] == round(ct["received_bytes"] / ct["stored_bytes"], 3)
    assert ct["uncompressed_ratio"] == round(ct["uncompressed_bytes"] / ct["stored_bytes"], 3)
    assert by_modality["SR"]["uncompressed_bytes"] == 0 and by_modality["SR"]["uncompressed_ratio"] is None
    # Nothing is on the cold tier here; the caches are reported beside, not in, the stored bytes.
    assert totals["hot_bytes"] == totals["stored_bytes"] and totals["cold_bytes"] == 0
    assert {c["folder"] for c in doc["caches"]["folders"]} == {"cache/decoded", "cache/htj2k"}
    assert doc["caches"]["bytes"] == sum(c["bytes"] for c in doc["caches"]["folders"])


def test_money_and_projection(served: tuple[Server, httpx.Client]) -> None:
    doc = served[1].get("/stats").json()
    assert doc["currency"] == "EUR" and doc["yearly_growth"] == pytest.approx(0.1)
    assert doc["prices"]["per_tb_month"] == 30 and doc["prices"]["cold_per_tb_month"] == 5
    assert "S3 Standard" in doc["prices"]["source"]
    totals, money = doc["totals"], doc["money"]
    as_received = totals["received_bytes"] / TB * 30
    as_stored = totals["hot_bytes"] / TB * 30 + totals["cold_bytes"] / TB * 5
    assert money["per_month_as_received"] == pytest.approx(as_received)
    assert money["per_month_as_stored"] == pytest.approx(as_stored)
    assert money["saving_per_month"] == pytest.approx(as_received - as_stored)
    assert money["saving_percent"] == round(100 * (as_received - as_stored) / as_received, 1)
    assert money["per_month_uncompressed"] == pytest.approx(totals["uncompressed_bytes"] / TB * 30)
    years = doc["projection"]
    assert [y["year"] for y in years] == [1, 2, 3, 4, 5]
    # Month m from now costs today's monthly cost times 1.1^(m/12); a year sums its twelve months.
    first_year = sum(1.1 ** (m / 12) for m in range(1, 13))
    assert years[0]["cost_as_received"] == pytest.approx(as_received * first_year)
    assert years[0]["cost_as_stored"] == pytest.approx(as_stored * first_year)
    assert years[4]["received_bytes"] == round(totals["received_bytes"] * 1.1**5)
    assert years[4]["cumulative_saving"] == pytest.approx(
        (as_received - as_stored) * sum(1.1 ** (m / 12) for m in range(1, 61))
    )
    for y in years:
        assert y["saving"] == pytest.approx(y["cost_as_received"] - y["cost_as_stored"])


def test_admin_scope_is_needed(served: tuple[Server, httpx.Client]) -> None:
    srv, client = served
    anonymous = httpx.get(f"{srv.root}/stats")
    assert anonymous.status_code == 401, anonymous.text
    reader = httpx.get(f"{srv.root}/stats", headers={"Authorization": f"Bearer {client.keys['viewer']}"})  # type: ignore[attr-defined]
    assert reader.status_code == 403 and "dicomweb.admin" in reader.json()["error"]
    assert client.get("/stats").status_code == 200


def test_cli_json_is_the_endpoint_and_the_table_is_readable(served: tuple[Server, httpx.Client]) -> None:
    srv, client = served
    endpoint = client.get("/stats").json()
    cli = dicomweb("stats", "--json", data=srv.data_dir)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == endpoint
    table = dicomweb("stats", data=srv.data_dir)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["modality", "studies", "instances", "received"]
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["CT"][1:3] == ["2", "4"] and rows["2020-06"][1:3] == ["1", "4"]
    assert "Five years at 10 % growth a year:" in table.stdout
    assert "EUR" in table.stdout and "Caches (disk not counted above)" in table.stdout


# ---- the aggregate alone, on SQLite and PostgreSQL -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = await new_postgres_database(request.getfixturevalue("postgres"))
    idx = Index(url)
    await idx.create()
    yield idx
    await idx.close()


async def test_aggregate_on_sqlite_and_postgres(index: Index, tmp_path: Path) -> None:
    """Hot and cold rows, StudyDates valid, missing and malformed, two modalities in one study: the same
    sums on both databases, with the receipt month (UTC) for studies without a usable date."""
    from sqlalchemy import update

    from storage import schema

    a, b, c = generate_uid(), generate_uid(), generate_uid()
    ct_a, sr_a = generate_uid(), generate_uid()
    items = [
        *(
            make_instance(tmp_path, study=a, series=ct_a, Modality="CT", StudyDate="20211103")
            for _ in range(3)
        ),
        make_instance(tmp_path, study=a, series=sr_a, Modality="SR", StudyDate="20211103"),
        make_instance(tmp_path, study=b, Modality="CT", StudyDate="19990231x"),  # digits enough: 1999-02
        make_instance(tmp_path, study=c, Modality="MR", StudyDate="21.03.2020"),  # malformed: receipt month
    ]
    await index.store(stored(items))
    # Sizes as a master, a lossy derivation and the cold tier would leave them (the index's own columns).
    sizes = [
        (1000, 400, 2000, "hot"),
        (1000, 400, 2000, "cold"),
        (1000, 100, 2000, "cold"),
        (50, 50, 0, "hot"),
    ]
    sizes += [(3000, 1500, 4000, "hot"), (700, 700, 800, "hot")]
    received_at = 1_600_000_000.0  # 2020-09-13 UTC
    async with index.engine.begin() as conn:
        for item, (received, size, pixels, tier) in zip(items, sizes, strict=True):
            await conn.execute(
                update(schema.instances)
                .where(schema.instances.c.sop_uid == item.sop_uid)
                .values(
                    received_size=received, size=size, pixel_bytes=pixels, tier=tier, created_at=received_at
                )
            )
    settings = Settings(data_dir=tmp_path / "data", price_per_tb_month=20.0, cold_price_per_tb_month=2.0)
    doc = (await storage_stats(index.engine, settings)).to_json()
    pairs = {(r["modality"], r["month"]): r for r in doc["by_modality_month"]}
    assert sorted(pairs) == [("CT", "1999-02"), ("CT", "2021-11"), ("MR", "2020-09"), ("SR", "2021-11")]
    ct = pairs[("CT", "2021-11")]
    assert (ct["studies"], ct["instances"], ct["received_bytes"], ct["stored_bytes"]) == (1, 3, 3000, 900)
    assert (ct["hot_bytes"], ct["cold_bytes"], ct["uncompressed_bytes"]) == (400, 500, 6000)
    months = {r["month"]: r for r in doc["by_month"]}
    assert (months["2021-11"]["studies"], months["2021-11"]["instances"]) == (1, 4)
    modalities = {r["modality"]: r for r in doc["by_modality"]}
    assert modalities["CT"]["studies"] == 2 and modalities["CT"]["stored_bytes"] == 2400
    totals = doc["totals"]
    assert (totals["studies"], totals["instances"]) == (3, 6)
    assert (totals["received_bytes"], totals["stored_bytes"], totals["cold_bytes"]) == (6750, 3150, 500)
    money = doc["money"]
    assert money["per_month_as_received"] == pytest.approx(6750 / TB * 20)
    assert money["per_month_as_stored"] == pytest.approx(2650 / TB * 20 + 500 / TB * 2)
