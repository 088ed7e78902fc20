"""Command line: `dicomweb serve` and `dicomweb import`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from storage.config import settings_from_env


def _settings(args: argparse.Namespace):
    overrides = {"data_dir": Path(args.data) if args.data else None}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "root", None):
        overrides["root"] = "/" + args.root.strip("/")
    return settings_from_env().with_overrides(**overrides)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from dicomweb.app import create_app

    settings = _settings(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"dicomweb: data in {settings.data_dir.resolve()}, DICOMweb root "
          f"http://{args.host}:{args.port}{settings.root}", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")


def _walk(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            print(f"warning: {p} does not exist", file=sys.stderr)
    return files


async def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.archive import Archive

    settings = _settings(args)
    archive = Archive(settings)
    await archive.open(start_masters=not args.no_masters)
    files = _walk(args.paths)
    stored = 0
    refused: Counter[str] = Counter()
    examples: dict[str, Path] = {}
    batch = 16
    try:
        with tqdm(total=len(files), unit="file", disable=args.quiet) as bar:
            for i in range(0, len(files), batch):
                chunk = files[i: i + batch]
                # Ingest consumes its input (it links it into the archive): give it copies.
                tmp = Path(tempfile.mkdtemp(dir=settings.tmp_dir))
                copies = []
                for j, f in enumerate(chunk):
                    dest = tmp / f"{j}.dcm"
                    await asyncio.to_thread(shutil.copyfile, f, dest)
                    copies.append(dest)
                outcomes = await archive.ingest(copies)
                shutil.rmtree(tmp, ignore_errors=True)
                for f, o in zip(chunk, outcomes, strict=True):
                    if o.stored:
                        stored += 1
                    else:
                        refused[o.reason] += 1
                        examples.setdefault(o.reason, f)
                bar.update(len(chunk))
        if not args.no_masters:
            pending = (await archive.index.job_counts()).get("pending", 0)
            if pending and not args.quiet:
                print(f"making {pending} layered JPEG 2000 master(s)...", flush=True)
            await archive.masters.drain()
        jobs = await archive.index.job_counts()
    finally:
        await archive.close()
    print(f"stored {stored} of {len(files)} file(s); refused {sum(refused.values())}")
    if args.no_masters:
        print(f"  {jobs.get('pending', 0)} master(s) left for the server to make")
    else:
        print(f"  kept as received (no lossless master possible): {jobs.get('kept', 0)}")
    for reason, n in refused.most_common():
        print(f"  {n:6d} x {reason}  (e.g. {examples[reason]})")
    return 0 if not refused else 1


async def _verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.archive import Archive
    from storage.verify import verify_archive

    archive = Archive(_settings(args))
    await archive.open(start_masters=False)
    try:
        total = await archive.index.count_instances()
        with tqdm(total=total, unit="instance", disable=args.quiet) as bar:
            report = await verify_archive(archive, bar.update)
        jobs = await archive.index.job_counts()
    finally:
        await archive.close()
    print(f"checked {report.instances} instance(s): {report.masters} master(s) decoded bit-exact, "
          f"{jobs.get('pending', 0)} waiting for a master, {jobs.get('kept', 0)} kept as received; "
          f"{len(report.problems)} problem(s)")
    for problem in report.problems:
        print(f"  {problem}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dicomweb", description="DICOMweb server with progressive JPEG 2000")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP server")
    p.add_argument("--host", default=os.environ.get("DICOMWEB_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("DICOMWEB_PORT", "8000")))
    p.add_argument("--data", help="data folder (index and blobs); env DICOMWEB_DATA")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+asyncpg://...; env DICOMWEB_DATABASE_URL")
    p.add_argument("--root", help="DICOMweb root path (default /dicom-web); env DICOMWEB_ROOT")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=serve)

    p = sub.add_parser("import", help="store DICOM files and folders through the ingest path")
    p.add_argument("paths", nargs="+")
    p.add_argument("--data", help="data folder; env DICOMWEB_DATA")
    p.add_argument("--database-url")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-masters", action="store_true",
                   help="store only; leave making masters to the server's background queue")
    p.set_defaults(func=lambda a: sys.exit(asyncio.run(_import(a))))

    p = sub.add_parser("verify", help="re-check every blob's checksum and that every master decodes bit-exact")
    p.add_argument("--data", help="data folder; env DICOMWEB_DATA")
    p.add_argument("--database-url")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda a: sys.exit(asyncio.run(_verify(a))))

    args = parser.parse_args(argv)
    args.func(args)
