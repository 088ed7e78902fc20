"""DICOM JSON (PS3.18 F) of a dataset read by pydicom, fast.

pydicom's own `to_json_dict` builds a DataElement for every attribute and asks it for its VM, its
emptiness and its JSON form: that is most of the time ingest spends on a file. Here the common value
representations go straight from the raw bytes to JSON values by pydicom's own rules (`_plain`, for
well-formed values in an ASCII-compatible character set), or else through pydicom's value converters
(`_fast`); anything else (sequences, AT, UN, values not yet read, odd cases) falls back to pydicom's
element conversion. The result is the same JSON pydicom would give: tests compare the two on every
readable test file.

Binary values larger than the threshold (bytes of the value) are given as a BulkDataURI, and so are,
whatever their size, the attributes that are bulk data by nature (`is_bulk_by_nature`): clients such as
OHIF's and dcm4chee expect palette lookup tables that way, and fetch them when they need them.
"""

from __future__ import annotations

import base64
import codecs
import re
import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})

# How pydicom splits and trims each string VR once decoded (pydicom.values): split on backslashes or not,
# and which characters it strips from each value.
_SPLIT_RSTRIP = frozenset({"AS", "CS", "DA", "DT", "TM"})  # convert_string: rstrip " \0" once, then split
_TEXT_MULTI = frozenset({"LO", "SH", "UC"})  # convert_text: split, then rstrip "\0 " each value
_TEXT_SINGLE = frozenset({"LT", "ST", "UT"})  # convert_single_string: one value, rstrip "\0 "
# Character sets (Python codec names) that decode ASCII bytes as ASCII, so that pure-ASCII text is the
# same whatever the Specific Character Set says. ISO 2022 sets are not here: ESC (an ASCII byte)
# switches them into other sets.
_ASCII_SAFE = ("iso8859", "latin-1", "utf-8", "ascii", "cp1252")
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_PLAIN_INT = re.compile(r"\s*[+-]?\d+\s*\Z")
_PLAIN_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*\Z")

# Attributes that are bulk data by nature, at any depth (the bulk data DICOM toolkits such as dcm4che
# leave out of metadata): palette colour lookup table data, plain (0028,1201-1204), large (retired,
# 0028,1211-1213) and segmented (0028,1221-1224); Blending LUT Data (0028,1408); LUT Data (0028,3006) of
# the Modality, VOI and Presentation LUT sequences; waveform data (5400,1010); Encapsulated Document
# (0042,0011); spectroscopy data (5600,0020); float and double float pixel data (7FE0,0008-0009).
BULK_BY_NATURE = frozenset(
    {
        0x00281201,
        0x00281202,
        0x00281203,
        0x00281204,
        0x00281211,
        0x00281212,
        0x00281213,
        0x00281221,
        0x00281222,
        0x00281223,
        0x00281224,
        0x00281408,
        0x00283006,
        0x54001010,
        0x00420011,
        0x56000020,
        0x7FE00008,
        0x7FE00009,
    }
)
# Repeating groups (PS3.5 7.6): overlay data (60xx,3000), and the retired curve data (50xx,3000) and
# audio sample data (50xx,200C); xx is even, 00 to 1E.
_REPEATING_BULK = {0x6000: (0x3000,), 0x5000: (0x3000, 0x200C)}


def is_bulk_by_nature(tag: int) -> bool:
    if tag in BULK_BY_NATURE:
        return True
    group, element = tag >> 16, tag & 0xFFFF
    base = group & 0xFF00
    return (
        base in _REPEATING_BULK
        and group % 2 == 0
        and group - base <= 0x1E
        and element in _REPEATING_BULK[base]
    )


def ascii_safe(encodings: list[str] | str | None) -> bool:
    """Whether pure-ASCII text values decode to themselves under these character sets."""
    if not encodings:
        return True
    for name in [encodings] if isinstance(encodings, str) else encodings:
        try:
            codec = codecs.lookup(name).name
        except LookupError:
            return False
        if not codec.startswith(_ASCII_SAFE):
            return False
    return True


def _plain(vr: str, raw: bytes, little_endian: bool, text_ok: bool) -> list[Any] | None:
    """The JSON values of a well-formed string or number value, by pydicom's rules; None if unsure."""
    if vr in _NUMBER_FORMATS:
        fmt = _NUMBER_FORMATS[vr]
        size = struct.calcsize("<" + fmt)
        if len(raw) % size:
            return None
        return list(struct.unpack(f"{'<' if little_endian else '>'}{len(raw) // size}{fmt}", raw))
    if not raw.isascii():
        return None
    text = raw.decode("ascii")
    if vr in _SPLIT_RSTRIP or vr == "UI":
        values = text.rstrip(" \x00").split("\\")
    elif vr == "IS":
        values = text.rstrip(" \x00").split("\\")
        return [int(v) for v in values] if all(_PLAIN_INT.match(v) for v in values) else None
    elif vr == "DS":
        values = text.strip().rstrip(" \x00").split("\\")
        return [float(v) for v in values] if all(_PLAIN_DECIMAL.match(v) for v in values) else None
    elif vr == "AE":
        values = [v.strip() for v in text.split("\\")]
    elif vr == "UR":
        values = [text.rstrip()]
    elif not text_ok or "\x1b" in text:
        return None
    elif vr in _TEXT_MULTI:
        values = [v.rstrip("\x00 ") for v in text.split("\\")]
    elif vr in _TEXT_SINGLE:
        values = [text.rstrip("\x00 ")]
    elif vr == "PN":
        names = []
        for value in text.rstrip("\x00 ").split("\\"):
            comps = value.split("=")
            while comps and not comps[-1]:
                comps.pop()
            if not comps:
                return None
            names.append(dict(zip(("Alphabetic", "Ideographic", "Phonetic"), comps, strict=False)))
        return names
    else:
        return None
    if len(values) == 1 and not values[0]:
        return []
    return values


def _values(value: Any) -> list[Any] | None:
    """pydicom's value as a list of values, or None when the element is empty (VM 0)."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return list(value) if len(value) else None
    if isinstance(value, str | bytes | PersonName):
        return [value] if value else None
    return [value]


def _fast(
    raw: RawDataElement, encodings: str | list[str], bulk_uri: str, threshold: int, text_ok: bool = False
) -> dict | None:
    vr, value = raw.VR, raw.value
    if vr is None:
        return None
    if vr in BINARY_VRS:
        length = raw.length
        if length == 0xFFFFFFFF:  # undefined length (encapsulated): the value's own size counts
            if value is None:
                return None
            length = len(value)
        if length == 0:
            return {"vr": vr}
        if length > threshold:
            return {"vr": vr, "BulkDataURI": bulk_uri}
        if value is None:
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if value is None and raw.length:
        return None  # deferred: let pydicom read it
    if value and (plain := _plain(vr, value, raw.is_little_endian, text_ok)) is not None:
        return {"vr": vr, "Value": plain} if plain else {"vr": vr}
    if vr in STRING_VRS or vr in INT_VRS or vr in FLOAT_VRS:
        values = _values(convert_value(vr, raw, encodings))
        if values is None:
            return {"vr": vr}
        if any(v is None for v in values):
            return None
        if vr in INT_VRS:
            values = [int(v) for v in values]
        elif vr in FLOAT_VRS:
            values = [float(v) for v in values]
        return {"vr": vr, "Value": values}
    if vr == "PN":
        values = _values(convert_value(vr, raw, encodings))
        if values is None:
            return {"vr": vr}
        out = []
        for name in values:
            comps = name.components
            if not comps:
                return None  # an empty name among several: pydicom's own rules apply
            item = {"Alphabetic": comps[0]}
            if len(comps) > 1:
                item["Ideographic"] = comps[1]
            if len(comps) > 2:
                item["Phonetic"] = comps[2]
            out.append(item)
        return {"vr": vr, "Value": out}
    return None


def dataset_json(ds: Dataset, base: str, threshold: int, prefix: str = "") -> dict[str, Any]:
    """DICOM JSON of `ds`; binary values of more than `threshold` bytes, and the attributes that are bulk
    data by nature, become `{base}/bulkdata/{tag path}`."""
    encodings = ds._character_set
    text_ok = ascii_safe(encodings)
    out: dict[str, Any] = {}
    for tag in list(ds._dict):
        elem = ds._dict[tag]
        key = f"{tag:08X}"
        path = f"{prefix}{key}"
        uri = f"{base}/bulkdata/{path}"
        js = None
        if is_bulk_by_nature(tag):
            js = _bulk(ds, tag, uri)
        elif isinstance(elem, RawDataElement) and elem.VR is not None and elem.VR != "UN":
            js = _fast(elem, encodings, uri, threshold, text_ok)
        if js is None:
            js = _slow(ds, tag, base, path, threshold)
        out[key] = js
    return out


def _vr(vr: str) -> str:
    # An ambiguous VR pydicom could not resolve ("OB or OW", "US or OW") is OW: what Implicit VR Little
    # Endian, the only encoding that leaves it unsaid, uses for these attributes (PS3.5 A.1).
    return vr.split(" or ")[-1]


def _bulk(ds: Dataset, tag: BaseTag, uri: str) -> dict[str, Any]:
    """An attribute that is bulk data by nature: a BulkDataURI unless it is empty. A raw element with its
    VR says so without its value being read (a deferred value may be megabytes)."""
    raw = ds._dict[tag]
    if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR != "UN":
        vr, empty = raw.VR, raw.length == 0
    else:
        elem = ds[tag]
        vr, empty = _vr(elem.VR), elem.is_empty
    return {"vr": vr} if empty else {"vr": vr, "BulkDataURI": uri}


def _slow(ds: Dataset, tag: int, base: str, path: str, threshold: int) -> dict[str, Any]:
    elem = ds[tag]
    if elem.VR == "SQ":
        items = [
            dataset_json(item, base, threshold, f"{path}/{i}/") for i, item in enumerate(elem.value or [])
        ]
        return {"vr": "SQ", "Value": items}
    binary = elem.VR in BINARY_VRS or elem.VR == "UN" or (" or " in elem.VR and elem.VR != "US or SS")
    if binary and isinstance(elem.value, bytes):
        vr = _vr(elem.VR)
        if not elem.value:
            return {"vr": vr}
        if len(elem.value) > threshold:
            return {"vr": vr, "BulkDataURI": f"{base}/bulkdata/{path}"}
        return {"vr": vr, "InlineBinary": base64.b64encode(elem.value).decode("ascii")}
    return elem.to_json_dict(None, threshold)


# ---- bulk data values ---------------------------------------------------------------------------------

# Bytes per word of the binary VRs that have a byte order (OB and UN are byte streams).
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def bulk_value(path: Path, tag_path: str) -> bytes | None:
    """The value at `tag_path` (`00281201`, `00283010/0/00283006`) of the file at `path`, as bulk data
    is sent: uncompressed bytes in Little Endian byte order (PS3.18 8.7.3.3.1). None if there is no such
    binary or numeric value."""
    ds = pydicom.dcmread(path)
    little = ds.original_encoding[1] is not False
    parts = tag_path.strip("/").split("/")
    node: Dataset = ds
    try:
        for tag_text, index in zip(parts[:-1:2], parts[1::2], strict=True):
            node = node[int(tag_text, 16)].value[int(index)]
        elem = node[int(parts[-1], 16)]
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return _little_endian_bytes(elem, little)


def _little_endian_bytes(elem: DataElement, little: bool) -> bytes | None:
    vr = _vr(elem.VR)
    value = elem.value
    if isinstance(value, bytes):
        size = _WORD_SIZES.get(vr, 1)
        if little or size == 1 or len(value) % size:
            return value
        return _swap(value, size)
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is None or value is None:
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _swap(value: bytes, size: int) -> bytes:
    """Big endian words of `size` bytes turned little endian."""
    out = bytearray(len(value))
    for i in range(size):
        out[i::size] = value[size - 1 - i :: size]
    return bytes(out)
