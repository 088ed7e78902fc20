"""The fast DICOM JSON writer gives exactly what pydicom's `to_json_dict` gives, for every readable file
of pydicom's test files and pydicom-data (bulk data URIs named by tag path in both)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from storage.dicom_json import dataset_json
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES

BASE = "http://x/dicom-web/studies/1/series/2/instances/3"


def reference_json(ds: Dataset, threshold: int) -> dict:
    paths: dict[int, str] = {}

    def walk(d: Dataset, prefix: str) -> None:
        for elem in d:
            path = f"{prefix}{elem.tag:08X}"
            paths[id(elem)] = path
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    walk(item, f"{path}/{i}/")

    walk(ds, "")
    return ds.to_json_dict(threshold, lambda e: f"{BASE}/bulkdata/{paths[id(e)]}")


def readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference_json(pydicom.dcmread(path, force=True), 1024)
    except Exception:  # noqa: BLE001 - only files pydicom itself can turn into JSON are compared
        return False
    return True


FILES = [p for p in sorted(PYDICOM_TEST_FILES.glob("*.dcm")) + sorted(PYDICOM_DATA.glob("*.dcm")) if readable(p)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("threshold", [1024, 16])
def test_same_json_as_pydicom(path: Path, threshold: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference_json(pydicom.dcmread(path, force=True), threshold)
        got = dataset_json(pydicom.dcmread(path, force=True, defer_size=4096), BASE, threshold)
    assert got == expected
