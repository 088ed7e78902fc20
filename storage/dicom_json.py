"""DICOM JSON (PS3.18 F) of a dataset read by pydicom, fast.

pydicom's own `to_json_dict` builds a DataElement for every attribute and asks it for its VM, its
emptiness and its JSON form: that is most of the time ingest spends on a file. Here the common value
representations go straight from the raw bytes to JSON values by pydicom's own rules (`_plain`, for
well-formed values in an ASCII-compatible character set), or else through pydicom's value converters
(`_fast`); anything else (sequences, AT, UN, values not yet read, odd cases) falls back to pydicom's
element conversion. The result is the same JSON pydicom would give: tests compare the two on every
readable test file.
"""

from __future__ import annotations

import base64
import codecs
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
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


def _fast(raw: RawDataElement, encodings: list[str], bulk_uri: Callable[[], str], threshold: int,
          text_ok: bool = False) -> dict | None:
    vr = raw.VR
    if vr in BINARY_VRS:
        length = raw.length
        if length == 0xFFFFFFFF:  # undefined length (encapsulated): the value's own size counts
            if raw.value is None:
                return None
            length = len(raw.value)
        if length == 0:
            return {"vr": vr}
        # Same rule as pydicom: base64 makes a value a third longer.
        if length > (threshold // 4) * 3:
            return {"vr": vr, "BulkDataURI": bulk_uri()}
        if raw.value is None:
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(raw.value).decode("ascii")}
    if raw.value is None and raw.length:
        return None  # deferred: let pydicom read it
    if raw.length and (plain := _plain(vr, raw.value, raw.is_little_endian, text_ok)) is not None:
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
    """DICOM JSON of `ds`; binary values above `threshold` become `{base}/bulkdata/{tag path}`."""
    encodings = ds._character_set
    text_ok = ascii_safe(encodings)
    out: dict[str, Any] = {}
    for tag in list(ds._dict):
        elem = ds._dict[tag]
        key = f"{tag:08X}"
        path = f"{prefix}{key}"
        js = None
        if isinstance(elem, RawDataElement) and elem.VR is not None and elem.VR != "UN":
            js = _fast(elem, encodings, lambda p=path: f"{base}/bulkdata/{p}", threshold, text_ok)
        if js is None:
            js = _slow(ds, tag, base, path, threshold)
        out[key] = js
    return out


def _slow(ds: Dataset, tag: int, base: str, path: str, threshold: int) -> dict[str, Any]:
    elem = ds[tag]
    if elem.VR == "SQ":
        items = [dataset_json(item, base, threshold, f"{path}/{i}/") for i, item in enumerate(elem.value or [])]
        return {"vr": "SQ", "Value": items}
    return elem.to_json_dict(lambda _e: f"{base}/bulkdata/{path}", threshold)
