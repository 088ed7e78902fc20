"""Reading a received DICOM file: validation, index attributes, metadata JSON and frame layout.

Everything a request will later need (DICOM JSON metadata, where each frame's bytes lie in the file) is
computed here once, at ingest, so serving metadata and frames never re-parses a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID

from storage.dicom_json import dataset_json
from storage.implementation import stamp_file_meta
from storage.tags import is_series_level, is_study_level, tag_hex
from storage.transcode import native_frame_size
from storage.transfer_syntaxes import DEFLATED_LE, syntax
from storage.uids import is_valid_uid
from storage.values import json_int, json_text, normalize_time, pixel_data_size

PIXEL_DATA = BaseTag(0x7FE00010)
# Image attributes, as DICOM JSON keys.
SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES = "00280002", "00280004", "00280008"
ROWS, COLUMNS, BITS_ALLOCATED, BITS_STORED = "00280010", "00280011", "00280100", "00280101"
PIXEL_TAGS = (PIXEL_DATA, BaseTag(0x7FE00008), BaseTag(0x7FE00009))
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Written into stored metadata in place of the public base URL, replaced when serving, so a server
# moved behind a proxy or to another host needs no re-index.
BASE_PLACEHOLDER = "{{BASE}}"
MASTER_PHOTOMETRICS = {1: {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"}, 3: {"RGB"}}
ITEM_TAG = 0xFFFEE000
SEQ_DELIM = 0xFFFEE0DD


# Largest decoded frame accepted (bytes): 16384 x 16384 RGB at 16 bits is 1.5 GiB; whole-slide images come
# as tiles far below this.
MAX_FRAME_BYTES = 2 * 1024**3


class InvalidInstance(ValueError):
    """The bytes are not a storable DICOM instance; str() is the reason given to the client."""


@dataclass
class ParsedInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    # Index rows, ready to write (JSON columns already serialised): built in the parsing process, so
    # only compact values travel back to the server process.
    study_row: dict[str, Any]
    series_row: dict[str, Any]
    instance_row: dict[str, Any]
    # For each frame: the (offset, length) pieces of the file that hold its bytes, in order.
    frames: list[list[tuple[int, int]]] = field(default_factory=list)
    encapsulated: bool = False
    # Frames in the image; may exceed len(frames) when they cannot be addressed in the file
    # (deflated files, multi-frame 1-bit images) and must be decoded on request.
    number_of_frames: int = 0
    # Why the instance is kept as received (master_refusal); empty when it is to become a master.
    kept_reason: str = ""
    sha256: str = ""

    @property
    def master_candidate(self) -> bool:
        """Worth turning into a layered JPEG 2000 master (decodable losslessly, a shape OpenJPEG codes)."""
        return not self.kept_reason


def instance_path(study: str, series: str, sop: str) -> str:
    return f"{BASE_PLACEHOLDER}/studies/{study}/series/{series}/instances/{sop}"


def read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, defer_size=4096)
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt input
        raise InvalidInstance(f"not a readable DICOM file: {exc}") from None
    # No preamble or file meta: accept only if it still parses as a dataset with instance UIDs.
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=4096)
    except Exception as exc:  # noqa: BLE001 - garbage bytes fail in arbitrary ways
        raise InvalidInstance(f"not a DICOM file: {exc}") from None
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise InvalidInstance("not a DICOM file: no DICM prefix and no SOP Instance UID")
    _make_part10(path, ds)
    try:
        return pydicom.dcmread(path, defer_size=4096)
    except Exception as exc:  # noqa: BLE001 - the dataset parsed only with guesses; refuse it
        raise InvalidInstance(f"no Part 10 header, and the dataset cannot be read as one: {exc}") from None


def _make_part10(path: Path, ds: Dataset) -> None:
    """Give a file that came without a Part 10 header (no preamble, no File Meta Information, as older
    tools and some gateways write) its preamble and File Meta Information, keeping the dataset's bytes.

    Every stored blob is then a proper Part 10 file: retrievals with `transfer-syntax=*` return what
    any toolkit can read, and nothing later has to guess the encoding (PS3.10 7.1)."""
    meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        # The meta group is there, only the preamble is missing: the body already starts with it.
        header = b"\0" * 128 + b"DICM"
    else:
        if not ds.is_little_endian and ds.is_implicit_VR:
            raise InvalidInstance("no Part 10 header, and implicit VR big endian is no DICOM transfer syntax")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(_uid(ds, "SOPClassUID"))
        meta.MediaStorageSOPInstanceUID = UID(_uid(ds, "SOPInstanceUID"))
        meta.TransferSyntaxUID = UID(_transfer_syntax(ds))
        stamp_file_meta(meta)
        out = DicomBytesIO()
        write_file_meta_info(out, meta, enforce_standard=True)
        header = b"\0" * 128 + b"DICM" + out.getvalue()
    tmp = path.with_name(path.name + ".part10")
    with open(tmp, "wb") as dst, open(path, "rb") as src:
        dst.write(header)
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, path)


def _uid(ds: Dataset, keyword: str) -> str:
    # Read from the raw bytes when possible: pydicom's conversion would replace the raw element by a
    # DataElement, which then takes the slow road to JSON.
    tag = tag_for_keyword(keyword)
    raw = ds._dict.get(BaseTag(tag)) if tag is not None else None
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        value = raw.value.decode("latin-1").rstrip("\x00 ")
    else:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - a corrupt element reads as missing
            value = None
    if not value:
        raise InvalidInstance(f"missing {keyword}")
    text = str(value).strip().rstrip("\x00")
    if not is_valid_uid(text):
        raise InvalidInstance(f"malformed {keyword}: {text[:80]!r}")
    return text


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    # Files without meta: pydicom worked out the encoding while reading.
    if not ds.is_little_endian:
        return "1.2.840.10008.1.2.2"
    return "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"


def _level_subset(meta: dict[str, Any], wanted) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if wanted(k)}


def _first(meta: dict[str, Any], key: str) -> Any:
    """The first value of an attribute in DICOM JSON, None when absent or empty."""
    values = meta.get(key, {}).get("Value")
    return values[0] if values else None


def _check_declared_frame_size(meta: dict[str, Any]) -> None:
    """Refuse an image whose declared decoded frame is absurd, before anything is decoded or allocated: a
    few bytes of compressed data can declare 65535 x 65535 pixels of 3 x 64 bits (100 GB), and decoding it
    (making its master, rendering it) would allocate that much."""
    size = (
        int(_first(meta, ROWS) or 0)
        * int(_first(meta, COLUMNS) or 0)
        * int(_first(meta, SAMPLES_PER_PIXEL) or 1)
        * int(_first(meta, BITS_ALLOCATED) or 0)
        + 7
    ) // 8
    if size > MAX_FRAME_BYTES:
        raise InvalidInstance(
            f"declared frame of {size} bytes decoded exceeds the limit of {MAX_FRAME_BYTES} "
            "(Rows x Columns x Samples per Pixel x Bits Allocated)"
        )


def _native_frames(
    meta: dict[str, Any], raw: RawDataElement, file_size: int, nframes: int
) -> list[list[tuple[int, int]]]:
    length = raw.length
    if raw.value_tell + length > file_size:
        raise InvalidInstance("truncated file: pixel data runs past the end of the file")
    rows, columns, bits = (
        int(_first(meta, ROWS)),
        int(_first(meta, COLUMNS)),
        int(_first(meta, BITS_ALLOCATED)),
    )
    if bits == 1:
        # Bit-packed frames need not start on byte boundaries: serve the whole value as one piece.
        expected = (rows * columns * nframes + 7) // 8
        if length < expected:
            raise InvalidInstance(f"truncated pixel data: {length} bytes, expected {expected}")
        return [[(raw.value_tell, length)]] if nframes == 1 else []
    size = native_frame_size(
        rows, columns, int(_first(meta, SAMPLES_PER_PIXEL) or 1), str(_first(meta, PHOTOMETRIC) or ""), bits
    )
    if length < size * nframes:
        raise InvalidInstance(f"truncated pixel data: {length} bytes for {nframes} frame(s) of {size}")
    return [[(raw.value_tell + i * size, size)] for i in range(nframes)]


def parse_fragments(value: bytes, value_offset: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Basic offset table and the (file offset, length) of every fragment of encapsulated pixel data."""
    pos, end = 0, len(value)
    bot: list[int] = []
    fragments: list[tuple[int, int]] = []
    first = True
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQ_DELIM:
            return bot, fragments
        if tag != ITEM_TAG or pos + length > end:
            raise InvalidInstance("malformed or truncated encapsulated pixel data")
        if first:
            bot = list(struct.unpack_from(f"<{length // 4}I", value, pos))
            first = False
        else:
            fragments.append((value_offset + pos, length))
        pos += length
    # pydicom strips the sequence delimiter from the value it returns, so reaching the end is normal.
    if first:
        raise InvalidInstance("encapsulated pixel data has no offset table item")
    return bot, fragments


_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")


def _encapsulated_frames(ds: Dataset, path: Path, raw, nframes: int) -> list[list[tuple[int, int]]]:
    value = raw.value
    if value is None:
        with open(path, "rb") as fh:
            fh.seek(raw.value_tell)
            value = fh.read(raw.length) if raw.length != 0xFFFFFFFF else fh.read()
    bot, fragments = parse_fragments(value, raw.value_tell)
    if not fragments:
        raise InvalidInstance("encapsulated pixel data has no fragments")
    if nframes == 1:
        return [fragments]
    if len(fragments) == nframes:
        return [[f] for f in fragments]
    eot = ds.get("ExtendedOffsetTable")
    offsets: list[int] = []
    if eot is not None:
        offsets = list(struct.unpack(f"<{len(eot.value) // 8}Q", eot.value))
    elif bot:
        offsets = bot
    if len(offsets) == nframes:
        # Offsets are measured from the first fragment's item tag.
        base = fragments[0][0] - 8
        frames: list[list[tuple[int, int]]] = [[] for _ in range(nframes)]
        starts = [base + o for o in offsets]
        for frag in fragments:
            index = max(i for i, s in enumerate(starts) if s <= frag[0] - 8)
            frames[index].append(frag)
        return frames
    # No usable table: a new frame begins where a fragment begins with a codestream marker.
    with open(path, "rb") as fh:
        frames = []
        for off, length in fragments:
            head = os.pread(fh.fileno(), 12, off)
            if not frames or any(head.startswith(m) for m in _FRAME_STARTS):
                frames.append([])
            frames[-1].append((off, length))
    if len(frames) != nframes:
        raise InvalidInstance(f"cannot find {nframes} frames among {len(fragments)} fragments")
    return frames


def master_refusal(meta: dict[str, Any], ts: str, number_of_frames: int) -> str:
    """ "" for pixel data that can be held losslessly as a layered JPEG 2000 master (checked again,
    exactly, when the master is made: this only decides whether to try), else why the instance is kept
    as received: short and stable, so that instances can be counted per reason. `meta` is the
    instance's DICOM JSON."""
    if number_of_frames < 1:
        return "float pixel data" if "7FE00008" in meta or "7FE00009" in meta else "no pixel data"
    if not syntax(ts).lossless:
        name = UID(ts).name if UID(ts).is_transfer_syntax else ""
        return f"lossy or not losslessly decodable transfer syntax: {name or ts}"
    try:
        spp = int(_first(meta, SAMPLES_PER_PIXEL) or 1)
        bits = int(_first(meta, BITS_ALLOCATED))
        stored = int(_first(meta, BITS_STORED) or bits)
        photometric = str(_first(meta, PHOTOMETRIC) or "").strip()
    except (TypeError, ValueError):
        return "unreadable image attributes"
    if bits not in (8, 16):
        return f"Bits Allocated {bits} (masters hold 8 or 16)"
    if not 2 <= stored <= 16:
        return f"Bits Stored {stored} (masters hold 2 to 16)"
    reversible = spp == 3 and syntax(ts).reversible_colour
    allowed = MASTER_PHOTOMETRICS.get(spp, set()) | ({"YBR_RCT"} if reversible else set())
    if photometric not in allowed:
        return f"Photometric Interpretation {photometric or 'missing'} with {spp} sample(s) per pixel"
    return ""


def frame_from_file(fh: BinaryIO, pieces: Sequence[Sequence[int]]) -> bytes:
    """The bytes of one frame of an open file: its fragments' (offset, length) pieces, joined."""
    return b"".join(os.pread(fh.fileno(), length, offset) for offset, length in pieces)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parse_instance(
    path: Path, *, bulk_data_threshold: int = 1024, checksum_candidates: bool = True
) -> ParsedInstance:
    """Everything the index needs about one file, and its SHA-256.

    With `checksum_candidates` false (ingest), a file that will become a master gets no checksum here:
    its master replaces it within minutes, checked pixel by pixel against it, and gets its own; should
    no master be made, the master queue computes the received file's checksum then. Hashing a 512x512
    CT slice costs a third of parsing it, on the path an upload waits for."""
    ds = read_dataset(path)
    try:
        parsed = _parse(ds, path, bulk_data_threshold)
    except InvalidInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt element deep in the file
        raise InvalidInstance(f"unreadable dataset: {type(exc).__name__}: {exc}") from None
    if checksum_candidates or not parsed.master_candidate:
        parsed.sha256 = parsed.instance_row["sha256"] = file_sha256(path)
    return parsed


def parse_files(paths: list[Path], bulk_data_threshold: int) -> list[ParsedInstance | InvalidInstance]:
    """parse_instance for several received files; a file that cannot be stored gives its InvalidInstance."""
    out: list[ParsedInstance | InvalidInstance] = []
    for path in paths:
        try:
            out.append(
                parse_instance(path, bulk_data_threshold=bulk_data_threshold, checksum_candidates=False)
            )
        except InvalidInstance as exc:
            out.append(exc)
    return out


def _parse(ds: Dataset, path: Path, threshold: int) -> ParsedInstance:
    study, series, sop = (_uid(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    sop_class = _uid(ds, "SOPClassUID")
    ts = _transfer_syntax(ds)
    file_size = path.stat().st_size

    # Pixel data is described by its frames, never loaded for the JSON: set it aside meanwhile.
    pixel_elems = {t: ds._dict.pop(t) for t in PIXEL_TAGS if t in ds._dict}
    base = instance_path(study, series, sop)
    try:
        meta = dataset_json(ds, base, threshold)
    finally:
        ds._dict.update(pixel_elems)
    for tag in PIXEL_TAGS:
        if tag in ds._dict:
            vr = ds._dict[tag].VR or "OB"
            meta[tag_hex(tag)] = {
                "vr": vr if vr in BULK_VRS else "OB",
                "BulkDataURI": f"{base}/bulkdata/{tag_hex(tag)}",
            }
    meta = dict(sorted(meta.items()))
    # Serialised here, so a value orjson cannot encode refuses the instance at ingest.
    metadata_json = orjson.dumps(meta)

    # The image attributes are read from the JSON: asking pydicom would convert each element again.
    frames: list[list[tuple[int, int]]] = []
    encapsulated = False
    raw = ds._dict.get(PIXEL_DATA)
    has_image = ROWS in meta and BITS_ALLOCATED in meta
    number_of_frames = int(_first(meta, NUMBER_OF_FRAMES) or 1) if raw is not None and has_image else 0
    if raw is not None and has_image:
        _check_declared_frame_size(meta)
    # In a deflated file, offsets point into the inflated stream: frames are decoded on request.
    if isinstance(raw, RawDataElement) and has_image and ts != DEFLATED_LE:
        encapsulated = raw.length == 0xFFFFFFFF
        if encapsulated:
            frames = _encapsulated_frames(ds, path, raw, number_of_frames)
        else:
            frames = _native_frames(meta, raw, file_size, number_of_frames)

    inst_attrs = {k: v for k, v in meta.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
    study_attrs = _level_subset(inst_attrs, is_study_level)
    series_attrs = _level_subset(inst_attrs, is_series_level)
    return ParsedInstance(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax=ts,
        study_row=_study_row(study, study_attrs),
        series_row=_series_row(study, series, series_attrs),
        instance_row={
            "sop_uid": sop,
            "series_uid": series,
            "study_uid": study,
            "sop_class_uid": sop_class,
            "instance_number": json_int(inst_attrs, "00200013"),
            "number_of_frames": number_of_frames,
            "bits_allocated": json_int(inst_attrs, "00280100"),
            "pixel_representation": json_int(inst_attrs, "00280103"),
            "transfer_syntax": ts,
            "frames": orjson.dumps(frames),
            "attrs": orjson.dumps(inst_attrs),
            "metadata": metadata_json,
            "sha256": "",
            "pixel_bytes": pixel_data_size(inst_attrs, number_of_frames),
        },
        frames=frames,
        encapsulated=encapsulated,
        number_of_frames=number_of_frames,
        kept_reason=master_refusal(meta, ts, number_of_frames),
    )


def _study_row(study: str, a: dict[str, Any]) -> dict[str, Any]:
    return {
        "study_uid": study,
        "patient_name": json_text(a, "00100010"),
        "patient_id": json_text(a, "00100020"),
        "patient_birth_date": json_text(a, "00100030"),
        "patient_sex": json_text(a, "00100040"),
        "study_date": json_text(a, "00080020"),
        "study_time": normalize_time(json_text(a, "00080030")),
        "accession_number": json_text(a, "00080050"),
        "study_id": json_text(a, "00200010"),
        "study_description": json_text(a, "00081030"),
        "referring_physician_name": json_text(a, "00080090"),
        "attrs": orjson.dumps(a),
    }


def _series_row(study: str, series: str, a: dict[str, Any]) -> dict[str, Any]:
    return {
        "series_uid": series,
        "study_uid": study,
        "modality": json_text(a, "00080060"),
        "series_number": json_int(a, "00200011"),
        "series_description": json_text(a, "0008103E"),
        "series_date": json_text(a, "00080021"),
        "series_time": normalize_time(json_text(a, "00080031")),
        "pps_start_date": json_text(a, "00400244"),
        "pps_start_time": normalize_time(json_text(a, "00400245")),
        "attrs": orjson.dumps(a),
    }
