"""Moving studies to the cold tier (Archive.move_study_to_cold): instances and megabytes per second, from a
local blob folder to a cold folder on the same disk and to an S3 bucket (moto's server on loopback).

    python -m bench.tier_bench              # 300 CT slices (CT_small, masters) in one study
    python -m bench.tier_bench --instances 60

The copy is durable (fsync, or a completed PUT) and checked against the index's SHA-256 before the row
points at it; the hot blobs are deleted after the commit. moto is a Python program sharing this machine's
cores, so the S3 figure is a floor, not what a real bucket gives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from pydicom.data import get_testdata_file

from bench.cluster import BUCKET, S3_CREDENTIALS, kill_group, start_s3_server
from bench.measure import markdown_table
from storage import Archive, Settings
from tests.conftest import new_uids


def slices(folder: Path, study: str, count: int) -> list[Path]:
    source = Path(get_testdata_file("CT_small.dcm") or "").read_bytes()
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.dcm"
        path.write_bytes(new_uids(source, study=study, series=f"{study}.1", sop=f"{study}.1.{i + 1}"))
        paths.append(path)
    return paths


async def fill(data_dir: Path, study: str, count: int) -> None:
    """An archive of `count` CT slices in one study, every master made."""
    archive = Archive(Settings(data_dir=data_dir))
    await archive.open(parser_processes=1)
    try:
        paths = await asyncio.to_thread(slices, data_dir / "incoming", study, count)
        outcomes = await archive.ingest(paths)
        assert all(o.stored for o in outcomes), [o.reason for o in outcomes if not o.stored][:3]
        await archive.drain_masters()
    finally:
        await archive.close()


async def timed_move(data_dir: Path, cold_url: str, study: str, **settings: str) -> tuple[int, int, float]:
    archive = Archive(Settings(data_dir=data_dir, cold_blob_url=cold_url, **settings))  # type: ignore[arg-type]
    await archive.open(start_masters=False, parser_processes=1)
    try:
        started = time.perf_counter()
        moved, size = await archive.move_study_to_cold(study)
        return moved, size, time.perf_counter() - started
    finally:
        await archive.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dicomweb-tier-bench-"))
    s3_proc = None
    rows = []
    try:
        template = base / "template"
        study = "1.2.826.0.1.3680043.8.498.77"
        asyncio.run(fill(template, study, args.instances))
        endpoint, s3_proc = start_s3_server(base / "s3")
        os.environ.update({**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
        targets = [
            ("folder (same disk)", str(base / "cold"), {}),
            (
                "S3 (moto, loopback)",
                f"s3://{BUCKET}/cold",
                {"s3_endpoint": endpoint, "s3_region": "us-east-1"},
            ),
        ]
        for name, url, extra in targets:
            data_dir = base / name.split()[0] / "data"
            shutil.copytree(template, data_dir)
            moved, size, seconds = asyncio.run(timed_move(data_dir, url, study, **extra))
            assert moved == args.instances, moved
            rows.append(
                [
                    name,
                    str(moved),
                    f"{size / 1e6:.1f}",
                    f"{seconds:.2f}",
                    f"{moved / seconds:.0f}",
                    f"{size / 1e6 / seconds:.1f}",
                ]
            )
    finally:
        if s3_proc is not None:
            kill_group(s3_proc.pid)
        shutil.rmtree(base, ignore_errors=True)
    header = ["cold store", "instances", "MB", "seconds", "instances/s", "MB/s"]
    print("\n".join(markdown_table(header, rows, "lrrrrr")))


if __name__ == "__main__":
    main()
