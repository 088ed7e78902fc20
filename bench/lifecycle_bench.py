"""Lifecycle benchmark (issue 16): what the example policy saves on the bench corpus, and how fast
truncating layers is against decoding and re-encoding with OpenJPEG.

    python -m bench.lifecycle_bench [--quick] [--no-orthanc] [--policy deploy/lifecycle-example.toml]

Prints: bytes as received, as lossless masters, after the policy (StudyDate ages ignored: the corpus is
all old or undated), beside Orthanc's storage (it stores as received) when Orthanc is installed; per rule
the instances derived and the worst PSNR and maximum error; and per 1,000 instances the time of
truncation alone, of QA alone, of the whole apply (write, fsync, index), and of decoding and re-encoding
the same frames to the same ratio with OpenJPEG (storage.codec.openjpeg.encode_j2k, one layer at that
ratio), with the ratio of those times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import func, select

from bench.corpus import build_corpus, corpus_size
from storage import Archive, load_policy, schema, settings_from_env
from storage.codec import cut, decode, info
from storage.codec.openjpeg import encode_j2k
from storage.dicom_file import frame_from_file, parse_instance
from storage.lifecycle.qa import psnr_and_max_error, ssim

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 200  # instances timed one by one (truncation, QA, re-encode)


def _du(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file())


def orthanc_bytes(files: list[Path]) -> int | None:
    from bench import orthanc

    ok, why = orthanc.available()
    if not ok:
        print(f"Orthanc not measured: {why}")
        return None
    with orthanc.running() as handle, httpx.Client(timeout=120) as client:
        for path in files:
            client.post(f"{handle.base_url}/instances", content=path.read_bytes()).raise_for_status()
        return _du([handle.workdir / "storage"])


def time_sample(plans: list, blobs_root: Path) -> tuple[float, float, float, int]:
    """Seconds for truncation alone, QA alone, and decode + OpenJPEG re-encode at the same ratio, over
    the sampled instances; and how many instances that was."""
    t_cut = t_qa = t_reencode = 0.0
    for plan in plans:
        path = blobs_root / plan.blob_key
        parsed = parse_instance(path, checksum_candidates=False)
        with open(path, "rb") as fh:
            wholes = [frame_from_file(fh, pieces) for pieces in parsed.frames]
        for whole, choice in zip(wholes, plan.frames, strict=True):
            if choice.layers is None:
                continue
            t0 = time.perf_counter()
            part = cut(whole, layers=choice.layers)
            t1 = time.perf_counter()
            head = info(whole)
            reference, lossy = decode(whole), decode(part)
            psnr_and_max_error(reference, lossy, head.precision)
            ssim(reference, lossy, head.precision)
            t2 = time.perf_counter()
            pixels = decode(whole)
            planes = (
                [pixels.astype(np.int32)]
                if pixels.ndim == 2
                else [pixels[..., c].astype(np.int32) for c in range(pixels.shape[2])]
            )
            encode_j2k(
                planes,
                precision=head.precision,
                signed=head.signed,
                color=pixels.ndim == 3,
                numresolution=head.levels + 1,
                # OpenJPEG's ratio is against precision bits per sample; ours against the container's bytes.
                rates=[choice.ratio * head.precision / (8 * ((head.precision + 7) // 8))],
            )
            t3 = time.perf_counter()
            t_cut += t1 - t0
            t_qa += t2 - t1
            t_reencode += t3 - t2
    return t_cut, t_qa, t_reencode, len(plans)


async def measure(data: Path, policy_path: Path) -> dict:
    settings = settings_from_env().with_overrides(data_dir=data)
    archive = Archive(settings)
    await archive.open(start_masters=False, parser_processes=1)
    inst = schema.instances

    async def totals() -> tuple[int, int]:
        async with archive.index.engine.connect() as conn:
            received, stored = (
                await conn.execute(select(func.sum(inst.c.received_size), func.sum(inst.c.size)))
            ).one()
        return int(received), int(stored)

    try:
        received, masters = await totals()
        plan = await archive.lifecycle_plan(load_policy(policy_path), ignore_study_date=True)
        rules = [r.summary(settings) for r in plan.rules]
        planned = [i for r in plan.rules for i in r.instances]
        t_cut, t_qa, t_reencode, sampled = time_sample(planned[:SAMPLE], settings.data_dir / "blobs")
        t0 = time.perf_counter()
        result = await archive.apply_lifecycle_plan(plan)
        t_apply = time.perf_counter() - t0
        _, after = await totals()
    finally:
        await archive.close()
    return {
        "received": received,
        "masters": masters,
        "after": after,
        "rules": rules,
        "derived": result.derived,
        "sampled": sampled,
        "t_cut": t_cut,
        "t_qa": t_qa,
        "t_reencode": t_reencode,
        "t_apply": t_apply,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small corpus (smoke run)")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--policy", type=Path, default=ROOT / "deploy" / "lifecycle-example.toml")
    args = parser.parse_args(argv)
    corpus = build_corpus(*corpus_size(args.quick))
    files = corpus.paths()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
        data = Path(tmp) / "data"
        # The ingest path (same as STOW-RS), masters made before it returns.
        subprocess.run(
            [sys.executable, "-m", "dicomweb", "import", str(corpus.root), "--data", str(data), "--quiet"],
            check=False,
            stdout=subprocess.DEVNULL,
            env={**os.environ},
        )
        figures = asyncio.run(measure(data, args.policy))
    orthanc = None if args.no_orthanc else orthanc_bytes(files)
    mb = 1e6
    print(f"corpus: {len(files)} files, {corpus.root}")
    print(f"bytes as received:         {figures['received'] / mb:10.1f} MB")
    for label, key in (("as lossless masters:     ", "masters"), ("after the example policy:", "after")):
        gain = figures["received"] / figures[key]
        print(f"{label}  {figures[key] / mb:10.1f} MB  ({gain:.2f}x smaller than received)")
    if orthanc is not None:
        print(f"Orthanc (as received):     {orthanc / mb:10.1f} MB")
    print(f"{'rule':40} {'instances':>9} {'saving MB':>10} {'worst PSNR':>10} {'max error':>9}")
    for r in figures["rules"]:
        psnr = "-" if r["worst_psnr_db"] is None else f"{r['worst_psnr_db']:.1f}"
        error = "-" if r["worst_max_error"] is None else str(r["worst_max_error"])
        print(
            f"{r['name'][:40]:40} {r['instances']:>9} {r['saving_bytes'] / mb:>10.1f} {psnr:>10} {error:>9}"
        )
    n = max(figures["sampled"], 1)
    per_k = 1000 / n
    cut_s, qa_s, re_s = figures["t_cut"] * per_k, figures["t_qa"] * per_k, figures["t_reencode"] * per_k
    print(f"per 1,000 instances (timed on {figures['sampled']}):")
    print(f"  truncation alone:               {cut_s:8.2f} s")
    print(f"  QA alone (decode x2, PSNR, SSIM): {qa_s:6.2f} s")
    if figures["derived"]:
        print(
            f"  whole apply (cut, QA, write, index): {figures['t_apply'] * 1000 / figures['derived']:5.2f} s"
        )
    print(f"  decode + OpenJPEG re-encode:    {re_s:8.2f} s")
    if cut_s:
        print(f"  re-encode / truncation:         {re_s / cut_s:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
