"""A lossy archive copy of a master, cut from it without re-encoding, labelled as PS3.3 requires.

The first k quality layers of a layered JPEG 2000 master are a complete lossy codestream (the cutter
rewrites its headers and markers, storage.codec.cutter): the derived instance holds, per frame, the cut the
plan chose (or the whole codestream, for a frame none of whose lossy cuts met the rule), in transfer
syntax JPEG 2000 (1.2.840.10008.1.2.4.91). It is a new SOP Instance in the same study and series,
labelled per PS3.3 C.7.6.1.1.5 (Lossy Image Compression "01", its ratio and method, appended to any
earlier values) and C.7.6.1.1.4 (Image Type DERIVED, Derivation Description and Code Sequence, and Source
Image Sequence naming the original as its "Uncompressed predecessor").

Its SOP Instance UID and blob key are deterministic, made from the original's UID and the layers chosen,
so an apply that was killed and is run again makes the very same instance and overwrites the same blob.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from storage.codec import cut, decode, info
from storage.codec.fidelity import THREADED_SAMPLES
from storage.dicom_file import ParsedInstance, frame_from_file, parse_instance
from storage.lifecycle.plan import InstancePlan
from storage.lifecycle.qa import FrameQA, psnr_and_max_error, ssim
from storage.mastering.make import set_encapsulated, write_temporary
from storage.transfer_syntaxes import J2K

METHOD = "ISO_15444_1"  # PS3.3 C.7.6.1.1.5.1: JPEG 2000 (irreversible, or a truncated reversible stream)
LOSSY_COMPRESSION = ("113040", "DCM", "Lossy Compression")  # CID 7203
UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")  # CID 7202


class DerivationFailed(Exception):
    """The derived instance could not be made (the original is left as it is)."""


@dataclass
class Derived:
    path: Path  # the new Part 10 file, in a temporary folder beside the blobs
    parsed: ParsedInstance
    fidelity: list[dict[str, Any]]  # the ladder prefix kept, per frame
    qa: list[FrameQA]

    @property
    def sop_uid(self) -> str:
        return self.parsed.sop_uid


def derived_uid(original_uid: str, layers: list[int | None]) -> str:
    """The derived instance's UID: the same for the same original and the same cut (a rerun after a
    crash makes the same instance), under pydicom's root as the server's other UIDs."""
    chosen = ",".join("all" if k is None else str(k) for k in layers)
    return str(generate_uid(entropy_srcs=[original_uid, "lossy layer truncation", chosen]))


def derived_blob_key(series_uid: str, sop_uid: str) -> str:
    """Like storage.blobs.new_blob_key, but without the time: each derived instance has one version."""
    h = hashlib.sha1(series_uid.encode(), usedforsecurity=False).hexdigest()
    return f"{h[:2]}/{series_uid}/{sop_uid}.lossy.dcm"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _append(ds: Dataset, keyword: str, values: list[Any]) -> None:
    """Add `values` after those the (multi-valued string) element already has."""
    old = ds.get(keyword)
    if old is None or old == "":
        before: list[Any] = []
    elif isinstance(old, MultiValue | list | tuple):
        before = list(old)
    else:
        before = [old]
    combined = [*before, *values]
    setattr(ds, keyword, combined if len(combined) > 1 else combined[0])


def _append_item(ds: Dataset, keyword: str, item: Dataset) -> None:
    seq = ds.get(keyword)
    setattr(ds, keyword, Sequence([*(seq or []), item]))


def label(ds: Dataset, original: Dataset, new_uid: str, ratio: float, description: str) -> None:
    """Write the derived instance's identity and the labels PS3.3 asks of lossy compressed images."""
    ds.SOPInstanceUID = UID(new_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid)
    ds.LossyImageCompression = "01"
    _append(ds, "LossyImageCompressionRatio", [f"{ratio:.2f}"[:16]])
    _append(ds, "LossyImageCompressionMethod", [METHOD])
    image_type = list(original.get("ImageType") or [])
    ds.ImageType = ["DERIVED", *(image_type[1:] or ["SECONDARY"])]
    old_description = str(original.get("DerivationDescription") or "").strip()
    ds.DerivationDescription = (f"{old_description}; {description}" if old_description else description)[
        :1024
    ]
    _append_item(ds, "DerivationCodeSequence", _code(*LOSSY_COMPRESSION))
    source = Dataset()
    source.ReferencedSOPClassUID = original.SOPClassUID
    source.ReferencedSOPInstanceUID = original.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = Sequence([_code(*UNCOMPRESSED_PREDECESSOR)])
    _append_item(ds, "SourceImageSequence", source)


def derive(
    master_path: Path, plan: InstancePlan, work_dir: Path, *, bulk_data_threshold: int = 1024
) -> Derived:
    """Make the derived file of `plan` from its master, and measure each frame against the master's
    (the original pixels: the master is lossless). Raises DerivationFailed."""
    original = parse_instance(master_path, bulk_data_threshold=bulk_data_threshold, checksum_candidates=False)
    if original.sop_uid != plan.sop_uid or len(original.frames) != len(plan.frames):
        raise DerivationFailed("the master does not match the plan (replaced meanwhile?)")
    frames: list[bytes] = []
    qa: list[FrameQA] = []
    fidelity: list[dict[str, Any]] = []
    with open(master_path, "rb") as fh:
        for pieces, choice, ladder in zip(original.frames, plan.frames, plan.fidelity, strict=True):
            whole = frame_from_file(fh, pieces)
            head = info(whole)
            if choice.layers is None:
                frames.append(whole)
                fidelity.append(ladder)
                qa.append(
                    FrameQA(
                        choice.number, head.layers, len(whole), choice.uncompressed / len(whole), None, 0, 1.0
                    )
                )
                continue
            part = cut(whole, layers=choice.layers)
            threads = (os.cpu_count() or 1) if head.width * head.height >= THREADED_SAMPLES else 1
            reference = decode(whole, threads=threads)
            lossy = decode(part, threads=threads)
            psnr, max_error = psnr_and_max_error(reference, lossy, head.precision)
            qa.append(
                FrameQA(
                    choice.number,
                    choice.layers,
                    len(part),
                    choice.uncompressed / len(part),
                    psnr,
                    max_error,
                    ssim(reference, lossy, head.precision),
                )
            )
            frames.append(part)
            fidelity.append({**ladder, "layers": ladder["layers"][: choice.layers]})

    ds = pydicom.dcmread(master_path)
    source = pydicom.dcmread(master_path, stop_before_pixels=True)
    set_encapsulated(ds, frames, J2K)
    stored = sum(len(f) for f in frames)
    ratio = plan.pixel_bytes / stored if stored else 0.0
    cut_frames = [f for f in plan.frames if f.layers is not None]
    layers = sorted({f"{f.layers} of {f.total_layers}" for f in cut_frames})
    description = (
        f"Lossy JPEG 2000: the first {', '.join(layers)} quality layers of the lossless master kept "
        f"(no re-encoding) in {len(cut_frames)} of {len(plan.frames)} frame(s); {ratio:.1f}:1"
    )
    new_uid = derived_uid(plan.sop_uid, plan.layers)
    label(ds, source, new_uid, ratio, description)
    path = write_temporary(ds, work_dir)
    try:
        parsed = parse_instance(path, bulk_data_threshold=bulk_data_threshold)
        if parsed.sop_uid != new_uid or len(parsed.frames) != len(frames):
            raise DerivationFailed("the derived file does not read back as written")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Derived(path, parsed, fidelity, qa)
