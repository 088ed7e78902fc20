"""Turning a stored instance into another transfer syntax: Explicit VR Little Endian (the DICOMweb
default) from anything pydicom can decode, and frames as uncompressed little-endian bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage.errors import CannotProduce
from storage.transfer_syntaxes import EXPLICIT_BE, is_native

SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class CannotTranscode(CannotProduce):
    """The stored data cannot be turned into what was asked (406 to the client)."""


def _swap_words(data: bytes, width: int) -> bytes:
    if width == 1 or not data:
        return data
    usable = len(data) - len(data) % width
    arr = np.frombuffer(data[:usable], dtype=f">u{width}").astype(f"<u{width}")
    return arr.tobytes() + data[usable:]


def _big_to_little(ds: Dataset) -> None:
    """Swap the bytes of binary values that pydicom keeps as raw bytes."""
    for elem in ds.iterall():
        if elem.tag == 0x7FE00010:
            # OW pixel data is a stream of 16-bit words even when pixels are 8 bits; OB is bytes.
            bits = int(ds.get("BitsAllocated", 8) or 8)
            if elem.VR == "OW" or bits > 8:
                elem.value = _swap_words(elem.value, max(2, bits // 8))
        elif elem.VR in SWAP_WIDTH and isinstance(elem.value, bytes):
            elem.value = _swap_words(elem.value, SWAP_WIDTH[elem.VR])


def decoded_dataset(path: Path, *, decompress: bool = True) -> Dataset:
    """The dataset with raw values in little endian; compressed pixel data decoded if asked."""
    ds = pydicom.dcmread(path)
    # Convert every raw element now: pydicom cannot write some raw elements back (a None VR).
    for _ in ds.iterall():
        pass
    ts = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else ""
    if ts == EXPLICIT_BE:
        _big_to_little(ds)
    elif decompress and not is_native(ts) and "PixelData" in ds:
        try:
            # Keep the SOP Instance UID: the pixel values are the same (lossless decode of what
            # was stored), and a viewer must find the instance it asked for.
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "cannot produce"
            raise CannotTranscode(f"cannot decode {UID(ts).name or ts}: {exc}") from None
    return ds


def to_native(path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The instance re-encoded as Explicit (or Implicit) VR Little Endian Part 10 bytes."""
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise CannotTranscode(f"cannot produce transfer syntax {transfer_syntax}")
    ds = decoded_dataset(path)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = io.BytesIO()
    try:
        _write(out, ds, transfer_syntax)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CannotTranscode(f"cannot re-encode this instance: {exc}") from None
    return out.getvalue()


def _write(out: io.BytesIO, ds: Dataset, transfer_syntax: str) -> None:
    # dcmwrite, unlike save_as, may change endianness; _decoded already swapped the raw values.
    pydicom.dcmwrite(
        out,
        ds,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=True,
        enforce_file_format=True,
    )


def frame_size(ds: Dataset) -> int:
    """Bytes of one native frame (odd-length pixel data carries a pad byte that belongs to no frame)."""
    return native_frame_size(
        int(ds.Rows),
        int(ds.Columns),
        int(ds.get("SamplesPerPixel", 1) or 1),
        str(ds.get("PhotometricInterpretation", "")),
        int(ds.BitsAllocated),
    )


def native_frame_size(rows: int, columns: int, samples: int, photometric: str, bits_allocated: int) -> int:
    if photometric.startswith("YBR_FULL_42") and samples == 3:
        samples = 2  # 4:2:2 stores two samples per pixel
    return rows * columns * samples * bits_allocated // 8


def frame_native(path: Path, index: int) -> bytes:
    """One frame (0-based) as uncompressed little-endian bytes, decoded from whatever is stored."""
    ds = decoded_dataset(path)
    if "PixelData" not in ds:
        raise CannotTranscode("instance has no pixel data")
    data = ds.PixelData
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if int(ds.BitsAllocated) == 1:
        if nframes != 1:
            raise CannotTranscode("cannot split bit-packed frames")
        return data
    size = frame_size(ds)
    return data[index * size : (index + 1) * size]


def pixel_data_native(path: Path) -> bytes:
    ds = decoded_dataset(path)
    if "PixelData" not in ds:
        raise CannotTranscode("instance has no pixel data")
    return ds.PixelData
