"""Re-checking the archive: every blob matches its checksum, every master decodes to the pixels it
was made from."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from storage.archive import Archive
from storage.codec import decode
from storage.dicom_file import file_sha256, frame_from_file, parse_instance
from storage.mastering.make import container_dtype
from storage.transfer_syntaxes import J2K_LOSSLESS


@dataclass
class VerifyReport:
    instances: int = 0
    masters: int = 0
    problems: list[str] = field(default_factory=list)
    # (SOP Instance UID, reason) of each instance kept as received, without a master: not a problem,
    # but what an operator wants to know (lossy originals, objects without pixel data, failed encodes).
    kept: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def kept_reasons(self) -> dict[str, int]:
        """How many instances are kept as received, per reason, most frequent first."""
        return dict(Counter(reason for _, reason in self.kept).most_common())


def _master_pixels_sha256(path) -> str:
    """Hash of the decoded frames in the stored container type, as make_master hashed the originals."""
    parsed = parse_instance(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    dtype = container_dtype(int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0) or 0) == 1)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for pieces in parsed.frames:
            codestream = frame_from_file(fh, pieces)
            digest.update(np.ascontiguousarray(decode(codestream).astype(dtype)).tobytes())
    return digest.hexdigest()


def _check_file(path: Path, sop: str, key: str, sha: str, ts: str, pixel_sha: str | None) -> list[str]:
    if sha and file_sha256(path) != sha:
        return [f"{sop}: checksum mismatch for {key}"]
    if ts == J2K_LOSSLESS and pixel_sha:
        try:
            decoded = _master_pixels_sha256(path)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a finding
            return [f"{sop}: master does not decode: {exc}"]
        if decoded != pixel_sha:
            return [f"{sop}: master decodes to pixels other than the original's"]
    return []


async def _check(archive: Archive, sop: str, key: str, sha: str, ts: str, pixel_sha: str | None) -> list[str]:
    """The problems of one instance's blob, wherever the blob store keeps it (an S3 object is fetched to a
    temporary file)."""
    try:
        async with archive.blobs.local_file(key) as path:
            return await asyncio.to_thread(_check_file, path, sop, key, sha, ts, pixel_sha)
    except FileNotFoundError:
        return [f"{sop}: blob {key} is missing"]


async def verify_archive(archive: Archive, progress: Callable[[int], None] | None = None) -> VerifyReport:
    report = VerifyReport(kept=await archive.index.kept_as_received())
    rows = await archive.index.checksums()
    report.instances = len(rows)
    for sop, key, sha, ts, pixel_sha in rows:
        report.problems += await _check(archive, sop, key, sha, ts, pixel_sha)
        if ts == J2K_LOSSLESS and pixel_sha:
            report.masters += 1
        if progress:
            progress(1)
    return report
