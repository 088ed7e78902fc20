"""`dicomweb import`: store files and folders through the ingest path, make their masters, and say
exactly what happened to each file.

Every file gets one outcome: new (an instance the archive did not hold), replaced (the archive held this
SOP Instance; this copy replaced it), repeated (the same SOP Instance as an earlier file of this import;
the last copy is kept) or refused (with the reason). Every instance then gets its master state: made,
kept as received (with the reason: the master queue's, or why no master was wanted) or waiting. The
counts of each list add up, and `--report` writes the same per file, as CSV: it opens in a spreadsheet,
which is where an operator reconciling a folder against the archive looks, and Python's csv module
quotes reasons and paths holding commas or quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dicomweb.cli import CommandError, codec_stack, index_label, open_archive
from storage import Archive, Outcome, Settings

BATCH = 16  # files per ingest call: one index transaction each
EXAMPLES = 3  # file names shown per reason in the summary
POLL_SECONDS = 0.5
NEW, REPLACED, REPEATED, REFUSED = "new", "replaced", "repeated", "refused"
MADE, KEPT, WAITING = "made", "kept", "waiting"


@dataclass
class FileResult:
    path: Path
    outcome: str
    sop_uid: str = ""
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    master: str = ""
    master_reason: str = ""


@dataclass
class Tally:
    """Every file's result, and the SOP Instances this import stored (each with the file kept)."""

    results: list[FileResult] = field(default_factory=list)
    kept_file: dict[str, FileResult] = field(default_factory=dict)

    def add(self, path: Path, outcome: Outcome) -> FileResult:
        if not outcome.stored:
            result = FileResult(path, REFUSED, outcome.sop_uid or "", outcome.reason)
        else:
            sop = outcome.sop_uid or ""
            if sop in self.kept_file:
                kind, reason = (
                    REPEATED,
                    f"same SOP Instance as {self.kept_file[sop].path}; this later copy is kept",
                )
            elif outcome.replaced:
                kind, reason = REPLACED, "the archive held this SOP Instance; this copy replaced it"
            else:
                kind, reason = NEW, ""
            result = FileResult(path, kind, sop, reason)
            self.kept_file[sop] = result
        result.warnings = outcome.warnings
        self.results.append(result)
        return result

    def of(self, outcome: str) -> list[FileResult]:
        return [r for r in self.results if r.outcome == outcome]


# ---- reading the files ---------------------------------------------------------------------------


def walk(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(files under the given files and folders, in order; given paths that do not exist)."""
    files: list[Path] = []
    missing: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            missing.append(p)
    return files, missing


def _copy(sources: list[Path], folder: Path) -> list[Path | OSError]:
    """Copies to ingest (it moves its input into the archive); the error for a file that cannot be read."""
    copies: list[Path | OSError] = []
    for i, source in enumerate(sources):
        dest = folder / f"{i}.dcm"
        try:
            shutil.copyfile(source, dest)
        except OSError as exc:
            copies.append(exc)
        else:
            copies.append(dest)
    return copies


async def _ingest(archive: Archive, chunk: list[Path]) -> list[Outcome]:
    """Store one chunk of the user's files; one outcome per file, in order."""
    folder = Path(tempfile.mkdtemp(dir=archive.settings.tmp_dir))
    try:
        copies = await asyncio.to_thread(_copy, chunk, folder)
        readable = [c for c in copies if isinstance(c, Path)]
        stored = iter(await archive.ingest(readable))
        outcomes = [
            next(stored) if isinstance(c, Path) else Outcome(False, reason=f"cannot read: {c.strerror}")
            for c in copies
        ]
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    # pydicom's warnings name the temporary copy: name the user's file instead.
    for source, copy, outcome in zip(chunk, copies, outcomes, strict=True):
        outcome.warnings = [w.replace(str(copy), str(source)) for w in outcome.warnings]
    return outcomes


async def store_files(archive: Archive, files: list[Path], tally: Tally, quiet: bool) -> None:
    with tqdm(total=len(files), unit="file", desc="storing", disable=quiet) as bar:
        for i in range(0, len(files), BATCH):
            chunk = files[i : i + BATCH]
            for path, outcome in zip(chunk, await _ingest(archive, chunk), strict=True):
                tally.add(path, outcome)
                # A refused file's reason says enough; what pydicom said while trying (text files read
                # as DICOM give "Expected implicit VR...") is noise on screen, and kept in the report.
                for message in outcome.warnings if outcome.stored else []:
                    tqdm.write(f"warning: {path}: {message}", file=sys.stderr)
            bar.update(len(chunk))


# ---- masters -------------------------------------------------------------------------------------


async def make_masters(archive: Archive, quiet: bool) -> None:
    """Wait for the master queue to finish, with a progress bar fed by the job counts."""
    total = await archive.pending_masters()
    drain = asyncio.create_task(archive.drain_masters())
    with tqdm(total=total, unit="master", desc="making masters", disable=quiet or not total) as bar:
        while not drain.done():
            await asyncio.wait({drain}, timeout=POLL_SECONDS)
            pending = await archive.pending_masters()
            bar.update(max(0, total - pending - bar.n))
    await drain


async def measure_ladders(archive: Archive, quiet: bool) -> None:
    """Wait for every master's fidelity ladder to be measured (what a lifecycle policy chooses by), with
    a progress bar: the queue measures them once no master waits (storage.ladder)."""
    total = await archive.pending_ladders()
    drain = asyncio.create_task(archive.drain_masters(ladders=True))
    with tqdm(total=total, unit="master", desc="measuring ladders", disable=quiet or not total) as bar:
        while not drain.done():
            await asyncio.wait({drain}, timeout=POLL_SECONDS)
            bar.update(max(0, total - await archive.pending_ladders() - bar.n))
    await drain


async def note_masters(archive: Archive, tally: Tally) -> None:
    """Give every stored file its instance's master state and reason, read from the index."""
    rows = {row.sop_uid: row for row in await archive.master_report(list(tally.kept_file))}
    for result in tally.results:
        if result.outcome == REFUSED:
            continue
        kept_copy = tally.kept_file[result.sop_uid]
        if kept_copy is not result:
            result.master_reason = f"superseded by {kept_copy.path}"
            continue
        if (row := rows.get(result.sop_uid)) is None:
            continue  # deleted meanwhile, through the server
        if row.has_master:
            result.master = MADE
        elif row.state == "pending":
            result.master = WAITING
        else:
            result.master = KEPT
            result.master_reason = row.reason


# ---- the summary and the report ------------------------------------------------------------------


def _examples(results: list[FileResult]) -> list[str]:
    lines = [f"{' ' * 20}{r.path}" for r in results[:EXAMPLES]]
    if len(results) > EXAMPLES:
        lines.append(f"{' ' * 20}and {len(results) - EXAMPLES} more")
    return lines


def _by_reason(results: Iterable[FileResult], key: str) -> list[tuple[str, list[FileResult]]]:
    groups: dict[str, list[FileResult]] = defaultdict(list)
    for r in results:
        groups[getattr(r, key)].append(r)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _line(n: int, text: str, indent: int = 2) -> str:
    return f"{' ' * indent}{n:6d}  {text}"


def _reasons(results: list[FileResult], key: str) -> list[str]:
    lines = []
    for reason, group in _by_reason(results, key):
        lines.append(_line(len(group), reason, 10))
        lines += _examples(group)
    return lines


def summary(tally: Tally, no_masters: bool) -> list[str]:
    files, instances = tally.results, list(tally.kept_file.values())
    new, replaced, repeated, refused = (tally.of(k) for k in (NEW, REPLACED, REPEATED, REFUSED))
    lines = [f"{len(files)} file(s):", _line(len(new), "new instance(s) stored")]
    lines.append(_line(len(replaced), "replaced an instance the archive held (same SOP Instance UID)"))
    lines += _examples(replaced)
    lines.append(
        _line(
            len(repeated),
            "repeated an instance of this import (same SOP Instance UID; the last copy is kept)",
        )
    )
    lines += _examples(repeated)
    lines.append(_line(len(refused), "refused, not stored:" if refused else "refused"))
    lines += _reasons(refused, "reason")
    made = [r for r in instances if r.master == MADE]
    kept = [r for r in instances if r.master == KEPT]
    waiting = [r for r in instances if r.master == WAITING]
    lines.append(f"{len(instances)} instance(s) stored by this import:")
    lines.append(_line(len(made), "master(s) made (layered lossless JPEG 2000, checked bit-exact)"))
    lines.append(_line(len(kept), "kept as received:" if kept else "kept as received"))
    lines += _reasons(kept, "master_reason")
    lines.append(
        _line(
            len(waiting),
            "waiting for a master" + (" (the server's background queue makes them)" if no_masters else ""),
        )
    )
    if warned := [r for r in files if r.warnings and r.outcome != REFUSED]:
        lines.append(f"{len(warned)} stored file(s) with parser warnings (shown above, and in --report)")
    return lines


REPORT_COLUMNS = ("path", "outcome", "sop_instance_uid", "reason", "master", "master_reason", "warnings")


def write_report(path: Path, tally: Tally) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(REPORT_COLUMNS)
        for r in tally.results:
            out.writerow(
                [r.path, r.outcome, r.sop_uid, r.reason, r.master, r.master_reason, " | ".join(r.warnings)]
            )


# ---- the command ---------------------------------------------------------------------------------


def _quiet_logging() -> None:
    """Log lines go through tqdm (see run_import), and only what the summary does not already say."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    # Each kept instance is in the summary, with the user's file name rather than a blob's.
    logging.getLogger("storage.mastering.queue").setLevel(logging.ERROR)
    # Making a master reads the file again: pydicom repeats, naming the archive's blob, the warning
    # already shown for the user's file when it was stored.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


async def run_import(args: argparse.Namespace, settings: Settings) -> int:
    if args.report:
        try:  # before the import, not after an hour of it
            args.report.write_text("")
        except OSError as exc:
            raise CommandError(f"cannot write the report {args.report}: {exc.strerror}") from None
    files, missing = walk(args.paths)
    make = not args.no_masters
    try:
        codecs = codec_stack()  # nothing else runs yet: no need to leave the event loop
    except CommandError as exc:
        if make:
            raise
        # Storing needs no codec; the server that makes the masters will say the same at start-up.
        codecs = "none: this installation cannot make masters"
        print(f"dicomweb: warning: {exc}", file=sys.stderr)
    print(
        f"importing {len(files)} file(s) into {settings.data_dir.resolve()} "
        f"(index: {index_label(settings)}); codecs: {codecs}",
        flush=True,
    )
    _quiet_logging()
    tally = Tally()
    for path in missing:
        tally.results.append(FileResult(path, REFUSED, reason="no such file or folder"))
    # At least two parser processes: a file's warnings come back with its outcome only from a parser
    # process (storage/parse_warnings.py), even on a one-core machine.
    archive = await open_archive(settings, start_masters=make, parser_processes=max(2, os.cpu_count() or 1))
    try:
        with logging_redirect_tqdm():
            await store_files(archive, files, tally, args.quiet)
            if make:
                await make_masters(archive, args.quiet)
                if not args.no_ladders and archive.masters.ladder_workers:
                    await measure_ladders(archive, args.quiet)
        await note_masters(archive, tally)
    finally:
        await archive.close()
    print("\n".join(summary(tally, args.no_masters)))
    if args.report:
        write_report(args.report, tally)
        print(f"every file's outcome: {args.report}")
    return 1 if tally.of(REFUSED) else 0
