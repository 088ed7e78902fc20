"""Synthetic archives for the index benchmarks: many small studies, generated fast.

Every instance is a small DICOM file without pixel data (so no server spends time on images: what is
measured is the index), made by patching one template whose variable values all have a fixed length,
so an instance costs a few byte replacements rather than a pydicom write. Study ``i`` of a run:

- patient ``i // 2`` (two studies per patient): PatientName ``Pat0000123^Given`` (mixed case, so
  case-insensitive matching is exercised), PatientID ``PID0000123``;
- AccessionNumber ``ACC000000123``, StudyDate spread over 2000..2029 by a fixed permutation, StudyTime;
- one series, one instance; Modality cycles through ``MODALITIES``.

The answers to the benchmark's queries are therefore known in advance, and most of them (a patient
prefix, an accession number, a UID list) have the same size whatever the archive's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT", "NM")
UID_ROOT = "1.2.826.0.1.3680043.10.1414"  # + .<run>.<level>.<10 digits>
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (no pixel data here: kept as received)

_FIELDS = {
    # name: placeholder (every value replacing it has this length)
    "study": f"{UID_ROOT}.9.1.9999999991",
    "series": f"{UID_ROOT}.9.2.9999999992",
    "sop": f"{UID_ROOT}.9.3.9999999993",
    "name": "Pat9999991^Given",
    "pid": "PID9999992",
    "acc": "ACC999999993",
    "date": "29991231",
    "time": "235958",
    "mod": "XX",
    "num": "9999994",
    "desc": "Study 9999995 of a synthetic archive",
}


def study_uid(run: int, i: int, level: int = 1) -> str:
    return f"{UID_ROOT}.{run}.{level}.{1_000_000_000 + i}"


def patient_of(i: int) -> int:
    return i // 2


def patient_name(i: int) -> str:
    return f"Pat{patient_of(i):07d}^Given"


def patient_id(i: int) -> str:
    return f"PID{patient_of(i):07d}"


def accession(i: int) -> str:
    return f"ACC{i:09d}"


def study_date(i: int) -> str:
    # A fixed permutation of days over 30 years: dates do not follow load order.
    day = (i * 7919) % (30 * 360)
    return f"{2000 + day // 360}{1 + (day % 360) // 30:02d}{1 + day % 30:02d}"


def modality(i: int) -> str:
    return MODALITIES[i % len(MODALITIES)]


def _template() -> tuple[bytes, dict[str, bytes]]:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = _FIELDS["sop"]
    ds.StudyInstanceUID = _FIELDS["study"]
    ds.SeriesInstanceUID = _FIELDS["series"]
    ds.PatientName = _FIELDS["name"]
    ds.PatientID = _FIELDS["pid"]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = _FIELDS["acc"]
    ds.StudyDate = _FIELDS["date"]
    ds.StudyTime = _FIELDS["time"]
    ds.StudyDescription = _FIELDS["desc"]
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyID = _FIELDS["num"]
    ds.Modality = _FIELDS["mod"]
    ds.SeriesNumber = "1"
    ds.InstanceNumber = _FIELDS["num"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = _FIELDS["sop"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    placeholders = {k: v.encode() for k, v in _FIELDS.items()}
    for key, ph in placeholders.items():
        assert data.count(ph) >= 1, key
    return data, placeholders


_TEMPLATE, _PLACEHOLDERS = _template()


def instance(run: int, i: int, *, series: int | None = None, number: int | None = None) -> bytes:
    """Study ``i`` of run ``run`` (one instance); with ``series``/``number``, instance ``number`` of a
    big series ``series`` of that study instead."""
    assert 1 <= run <= 9 and 0 <= i < 500_000_000, (run, i)  # fixed lengths
    values = {
        "study": study_uid(run, i),
        "series": study_uid(run, i if series is None else series, 2),
        "sop": study_uid(run, i if number is None else 5_000_000_000 + i * 10_000 + number, 3),
        "name": patient_name(i),
        "pid": patient_id(i),
        "acc": accession(i),
        "date": study_date(i),
        "time": f"{(i // 3600) % 24:02d}{(i // 60) % 60:02d}{i % 60:02d}",
        "mod": modality(i),
        "num": f"{(i if number is None else number) % 10_000_000:07d}",
        "desc": f"Study {i % 10_000_000:07d} of a synthetic archive",
    }
    data = _TEMPLATE
    for key, ph in _PLACEHOLDERS.items():
        value = values[key].encode()
        assert len(value) == len(ph), (key, value)
        data = data.replace(ph, value)
    return data


def studies(run: int, start: int, stop: int) -> Iterator[bytes]:
    for i in range(start, stop):
        yield instance(run, i)


def big_series(run: int, i: int, count: int) -> list[bytes]:
    """``count`` instances of one series in study ``i`` (for series /metadata)."""
    return [instance(run, i, series=i, number=n + 1) for n in range(count)]
