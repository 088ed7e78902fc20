"""Turning a received instance into its layered lossless JPEG 2000 master, verified bit-exact.

A master is a standard DICOM Part 10 file (transfer syntax 1.2.840.10008.1.2.4.90): one codestream per
frame, an offset table, every other attribute unchanged (except what the standard requires of JPEG 2000
with the reversible colour transform: Photometric Interpretation YBR_RCT, pixel-interleaved). It replaces
the received file only after every frame, read back from the written file, decodes to exactly the
original pixel values. Anything else keeps the instance as received.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from storage.codec import MasterNotPossible, decode, encode_master, levels_to_drop
from storage.codec.fidelity import THREADED_SAMPLES
from storage.codec.layered_j2k import decomposition_levels
from storage.dicom_file import ParsedInstance, frame_from_file, parse_instance
from storage.implementation import stamp_file_meta
from storage.ladder import unmeasured_frame
from storage.transcode import decoded_dataset, frame_size
from storage.transfer_syntaxes import J2K_LOSSLESS, is_native

# Frames larger than this in total need 64-bit offsets (Extended Offset Table, PS3.5 A.4).
BOT_LIMIT = 0xFFFFFFFF


class VerificationFailed(MasterNotPossible):
    """The master did not decode to the original pixels: it is thrown away."""


@dataclass
class Master:
    path: Path  # the new Part 10 file, in a temporary folder beside the blobs
    parsed: ParsedInstance
    # Per frame: rows, columns, levels, layers, with the lossy layers not measured yet (storage.ladder).
    fidelity: list[dict[str, Any]]
    pixel_sha256: str  # of the original pixel values, for `dicomweb verify`


def container_dtype(bits_allocated: int, signed: bool) -> np.dtype:
    return np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")


def original_frames(ds: Dataset, path: Path, only: int | None = None) -> list[np.ndarray]:
    """The exact stored values of every frame (or of frame index `only`), in (rows, cols[, samples])
    arrays of the container type.

    Not `pixel_array`: that masks bits above Bits Stored, and a master made from masked values would
    silently lose them. Native data is read as stored; compressed data as its codec decodes it."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    dtype = container_dtype(int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0) or 0) == 1)
    ts = str(ds.file_meta.TransferSyntaxUID)
    buffers: list[tuple[bytes, int]] = []
    indices = range(nframes) if only is None else [only]
    if is_native(ts):
        data = decoded_dataset(path).PixelData  # big endian swapped, deflate inflated
        size = frame_size(ds)
        if len(data) < size * nframes:
            raise MasterNotPossible("pixel data is shorter than its frames")
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
        buffers = [(data[i * size : (i + 1) * size], planar) for i in indices]
    else:
        decoder = get_decoder(UID(ts))
        for i in indices:
            try:
                buf, meta = decoder.as_buffer(ds, index=i)
            except Exception as exc:  # noqa: BLE001 - any decoder failure: keep as received
                raise MasterNotPossible(f"cannot decode frame {i + 1}: {exc}") from None
            buffers.append((bytes(buf), int(meta.get("planar_configuration", 0) or 0)))
    frames = []
    for buf, planar in buffers:
        arr = np.frombuffer(buf, dtype=dtype, count=rows * cols * spp)
        if spp == 1:
            arr = arr.reshape(rows, cols)
        elif planar:
            arr = np.ascontiguousarray(arr.reshape(spp, rows, cols).transpose(1, 2, 0))
        else:
            arr = arr.reshape(rows, cols, spp)
        frames.append(arr)
    return frames


def _encoding(source: Dataset) -> dict[str, Any]:
    """encode_master's arguments for the frames of `source`."""
    return {
        "bits_stored": int(source.get("BitsStored", source.BitsAllocated)),
        "signed": int(source.get("PixelRepresentation", 0) or 0) == 1,
        "color": int(source.get("SamplesPerPixel", 1) or 1) == 3,
    }


def provisional_codestream(received: Path, number: int, fsiz: tuple[int, int] | None = None) -> bytes:
    """Frame `number` (1-based) of a received file as a layered JPEG 2000 codestream, for a viewer that
    cannot wait for the master: reduced first to the smallest resolution level of the master that is at
    least `fsiz` (so a thumbnail-sized cut costs a thumbnail-sized encode), else encoded as the master
    will be. Not verified, so only cuts of it (labelled lossy) are sent. Raises MasterNotPossible."""
    source = pydicom.dcmread(received)
    [frame] = original_frames(source, received, only=number - 1)
    if fsiz is not None:
        rows, cols = frame.shape[:2]
        drop = levels_to_drop(cols, rows, decomposition_levels(rows, cols), *fsiz)
        palette = str(source.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"
        frame = _reduced(frame, drop, average=not palette)
    return encode_master(frame, **_encoding(source))


def _reduced(frame: np.ndarray, levels: int, *, average: bool) -> np.ndarray:
    """`frame` at 1 / 2^levels of its size, ceil(n / 2^levels) on each side as a resolution level of
    JPEG 2000 is: the mean of each block (edges repeated to fill the last), or for palette indices,
    which are labels, the block's first sample."""
    if levels == 0:
        return frame
    step = 1 << levels
    if not average:
        return np.ascontiguousarray(frame[::step, ::step])
    rows, cols = frame.shape[:2]
    pad = [(0, -rows % step), (0, -cols % step)] + [(0, 0)] * (frame.ndim - 2)
    padded = np.pad(frame, pad, mode="edge")
    shape = (padded.shape[0] // step, step, padded.shape[1] // step, step, *frame.shape[2:])
    means = padded.reshape(shape).mean(axis=(1, 3))
    return np.rint(means).astype(frame.dtype)


def set_encapsulated(ds: Dataset, codestreams: list[bytes], transfer_syntax: str) -> None:
    """Make `ds`'s Pixel Data these codestreams, one frame each, in `transfer_syntax`: with a Basic Offset
    Table, or an Extended Offset Table when the offsets would not fit in 32 bits."""
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    if sum(len(c) + 8 for c in codestreams) < BOT_LIMIT:
        ds.PixelData = encapsulate(codestreams, has_bot=True)
    else:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            codestreams
        )
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    stamp_file_meta(ds.file_meta)


def write_temporary(ds: Dataset, work_dir: Path) -> Path:
    """`ds` written as a Part 10 file (explicit VR little endian) under a new name in `work_dir`."""
    fd, name = tempfile.mkstemp(suffix=".dcm", dir=work_dir)
    os.close(fd)
    path = Path(name)
    try:
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def make_master(received: Path, work_dir: Path, *, bulk_data_threshold: int = 1024) -> Master:
    """Encode, write, read back and verify; raises MasterNotPossible (or VerificationFailed)."""
    source = pydicom.dcmread(received)
    encoding = _encoding(source)
    color = encoding["color"]
    originals = original_frames(source, received)
    codestreams = [encode_master(f, **encoding) for f in originals]

    ds = decoded_dataset(received, decompress=False)  # raw values little endian, ready to re-encode
    set_encapsulated(ds, codestreams, J2K_LOSSLESS)
    if color:
        # PS3.5 8.2.4: JPEG 2000 with the reversible colour transform is YBR_RCT, interleaved.
        ds.PhotometricInterpretation = "YBR_RCT"
        ds.PlanarConfiguration = 0
    path = write_temporary(ds, work_dir)
    try:
        parsed = parse_instance(path, bulk_data_threshold=bulk_data_threshold)
        fidelity = _verify(path, parsed, originals)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    for f in originals:
        digest.update(np.ascontiguousarray(f.astype(f.dtype.newbyteorder("<"))).tobytes())
    return Master(path, parsed, fidelity, digest.hexdigest())


def _verify(path: Path, parsed: ParsedInstance, originals: list[np.ndarray]) -> list[dict[str, Any]]:
    """Decode every frame from the written file and compare with the original values; each frame's
    ladder as far as it is known without decoding more (cut sizes, the last layer lossless)."""
    if len(parsed.frames) != len(originals):
        raise VerificationFailed(f"master has {len(parsed.frames)} frames, original {len(originals)}")
    ladders = []
    with open(path, "rb") as fh:
        for number, (pieces, original) in enumerate(zip(parsed.frames, originals, strict=True), start=1):
            codestream = frame_from_file(fh, pieces)
            decoded = decode(
                codestream, threads=(os.cpu_count() or 1) if original.size >= THREADED_SAMPLES else 1
            )
            if decoded.shape != original.shape or not np.array_equal(decoded, original):
                raise VerificationFailed(
                    f"frame {number} of the master does not decode to the original pixels"
                )
            # The lossy prefixes are measured later, off the master's critical path (storage.ladder).
            ladders.append(unmeasured_frame(number, codestream))
    return ladders
