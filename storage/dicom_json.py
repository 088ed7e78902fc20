"""DICOM JSON (PS3.18 F) of a dataset read by pydicom, fast.

pydicom's own `to_json_dict` builds a DataElement for every attribute and asks it for its VM, its
emptiness and its JSON form: that is most of the time ingest spends on a file. Here the common value
representations go straight from the raw element through pydicom's value converters (so the values are
exactly pydicom's), and anything else (sequences, AT, UN, values not yet read, odd cases) falls back to
pydicom's element conversion. The result is the same JSON pydicom would give.
"""

from __future__ import annotations

import base64
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


def _values(value: Any) -> list[Any] | None:
    """pydicom's value as a list of values, or None when the element is empty (VM 0)."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return list(value) if len(value) else None
    if isinstance(value, str | bytes | PersonName):
        return [value] if value else None
    return [value]


def _fast(raw: RawDataElement, encodings: list[str], bulk_uri: Callable[[], str], threshold: int) -> dict | None:
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
    out: dict[str, Any] = {}
    for tag in list(ds._dict):
        elem = ds._dict[tag]
        key = f"{tag:08X}"
        path = f"{prefix}{key}"
        js = None
        if isinstance(elem, RawDataElement) and elem.VR is not None and elem.VR != "UN":
            js = _fast(elem, encodings, lambda p=path: f"{base}/bulkdata/{p}", threshold)
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
