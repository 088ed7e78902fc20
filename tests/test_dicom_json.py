"""The fast DICOM JSON writer gives exactly what pydicom's `to_json_dict` gives, for every readable file
of pydicom's test files and pydicom-data, once the bulk data rules are applied to pydicom's all-inline JSON
here: binary values of more than the threshold (in bytes), and attributes that are bulk data by nature
(the list below, written out independently of storage/dicom_json.py), become BulkDataURIs named by tag path.
"""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from storage.dicom_json import dataset_json
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES

BASE = "http://x/dicom-web/studies/1/series/2/instances/3"


# Bulk data by nature, whatever the size: palette LUT data (plain, large, segmented), Blending LUT Data,
# LUT Data, waveform data, Encapsulated Document, spectroscopy data, float and double float pixel data,
# and in repeating groups overlay data (60xx,3000), curve data (50xx,3000), audio samples (50xx,200C).
BULK_TAGS = {
    "00281201",
    "00281202",
    "00281203",
    "00281204",
    "00281211",
    "00281212",
    "00281213",
    "00281221",
    "00281222",
    "00281223",
    "00281224",
    "00281408",
    "00283006",
    "54001010",
    "00420011",
    "56000020",
    "7FE00008",
    "7FE00009",
}
REPEATING = {f"{0x6000 + g:04X}3000" for g in range(0, 0x20, 2)} | {
    f"{0x5000 + g:04X}{e}" for g in range(0, 0x20, 2) for e in ("3000", "200C")
}


def bulk_by_nature(key: str) -> bool:
    return key in BULK_TAGS or key in REPEATING


def with_bulk_rules(js: dict, threshold: int, prefix: str = "") -> dict:
    out = {}
    for key, element in js.items():
        path = f"{prefix}{key}"
        element = dict(element)
        vr = element["vr"]
        if vr == "SQ":
            element["Value"] = [
                with_bulk_rules(item, threshold, f"{path}/{i}/")
                for i, item in enumerate(element.get("Value", []))
            ]
        elif "Value" in element or "InlineBinary" in element:
            big = "InlineBinary" in element and len(base64.b64decode(element["InlineBinary"])) > threshold
            if bulk_by_nature(key) or big:
                element = {"vr": vr, "BulkDataURI": f"{BASE}/bulkdata/{path}"}
        out[key] = element
    return out


def reference_json(ds: Dataset, threshold: int) -> dict:
    return with_bulk_rules(ds.to_json_dict(1 << 40, None), threshold)  # all inline


def readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference_json(pydicom.dcmread(path, force=True), 1024)
    except Exception:  # noqa: BLE001 - only files pydicom itself can turn into JSON are compared
        return False
    return True


FILES = [
    p for p in sorted(PYDICOM_TEST_FILES.glob("*.dcm")) + sorted(PYDICOM_DATA.glob("*.dcm")) if readable(p)
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("threshold", [1024, 16, 4096])
def test_same_json_as_pydicom(path: Path, threshold: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference_json(pydicom.dcmread(path, force=True), threshold)
        got = dataset_json(pydicom.dcmread(path, force=True, defer_size=4096), BASE, threshold)
    assert got == expected
