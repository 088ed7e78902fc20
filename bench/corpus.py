"""Deterministic benchmark corpus.

The corpus is built once into a cache folder and reused: building the 300
slice CT takes a few seconds and every benchmark (and every server under
test) must see byte-identical files, otherwise the comparison is meaningless.

Contents:
  ct/NNNN.dcm     one CT series derived from the WG04 CT image 693_UNCR.dcm
  wg04/*.dcm      WG04 CR, MR and US images, copied verbatim (large frames)
  small/NNNN.dcm  many one-image studies derived from pydicom's CT_small.dcm
                  (exercises the study-list query)

``manifest.json`` is written last, so its presence marks a complete build.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Bump when the generated content changes so stale caches are rebuilt.
CORPUS_VERSION = 1
DEFAULT_SEED = 20240601

FULL_CT_SLICES = 300
FULL_SMALL_STUDIES = 500
QUICK_CT_SLICES = 60
QUICK_SMALL_STUDIES = 50

WG04_FILES = {"CR": "RG1_UNCR.dcm", "MR": "MR2_UNCR.dcm", "US": "US1_UNCR.dcm"}
CT_SOURCE = "693_UNCR.dcm"
SMALL_SOURCE = "CT_small.dcm"

# "DOE" is deliberately common so the PatientName=DOE* query returns a
# non-trivial, but well below `limit`, number of studies.
SURNAMES = [
    "DOE",
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "MARTIN",
    "DUPONT",
    "MULLER",
    "ROSSI",
    "SATO",
    "NGUYEN",
    "KOWALSKI",
]
GIVEN_NAMES = [
    "JOHN",
    "JANE",
    "ALEX",
    "MARIA",
    "PAUL",
    "ANNA",
    "LUCAS",
    "EMMA",
    "NOAH",
    "MIA",
    "LEO",
    "ZOE",
    "OMAR",
    "IRIS",
    "IVAN",
    "SARA",
]
STUDY_DESCRIPTIONS = [
    "CT HEAD W/O CONTRAST",
    "CT CHEST W CONTRAST",
    "CT ABDOMEN PELVIS",
    "CT SINUS",
    "CT ANGIO NECK",
    "CT LUMBAR SPINE",
    "CT CARDIAC SCORE",
    "CT KNEE RIGHT",
]
REFERRING = ["HOUSE^GREGORY", "GREY^MEREDITH", "WATSON^JOHN", "QUINN^MICHAELA", ""]


@dataclass
class Corpus:
    """Everything a benchmark needs to know about a built corpus."""

    root: Path
    seed: int
    ct_slices: int
    small_studies: int
    files: list[str]  # relative to root, in load order
    ct_study_uid: str
    ct_series_uid: str
    ct_sop_uids: list[str]  # in InstanceNumber order
    ct_rows: int
    ct_columns: int
    ct_frame_sha256: list[str]  # of the raw native PixelData of each slice
    study_count: int
    patient_names: list[str] = field(default_factory=list)  # one per study

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    def ct_frame_bytes(self) -> int:
        # 16 bits allocated, one sample per pixel (as in the source image).
        return self.ct_rows * self.ct_columns * 2

    def studies_matching_prefix(self, prefix: str) -> int:
        return sum(1 for n in self.patient_names if n.startswith(prefix))

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths())


def default_cache_dir() -> Path:
    # Outside the repository: other engineers share the tree, and the
    # corpus is ~200 MB.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicomweb-bench"


def wg04_path(name: str) -> Path:
    """Locate a pydicom-data (``data_store``) file without downloading."""
    import data_store  # installed by the pydicom-data package

    path = Path(data_store.__file__).parent / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found in pydicom-data ({path})")
    return path


def _uid(seed: int, *parts: object) -> str:
    # generate_uid hashes the entropy sources, so the same seed and parts
    # always give the same UID (needed for a reproducible cache).
    return generate_uid(entropy_srcs=[f"dicomweb-bench-seed={seed}", *map(str, parts)])


def _drop_group_lengths(ds: Dataset) -> None:
    # The source files carry (gggg,0000) group lengths; they become wrong as
    # soon as a UID changes length, and they are retired anyway.
    for tag in [e.tag for e in ds if e.tag.element == 0 and e.tag.group != 0x0002]:
        del ds[tag]


def _save(ds: Dataset, path: Path) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def vary_slice(
    base: np.ndarray, index: int, count: int, seed: int, padding: int | None, lo: int, hi: int
) -> np.ndarray:
    """Return a plausible neighbour slice of ``base``.

    Real adjacent CT slices differ smoothly (anatomy grows/shrinks and drifts)
    plus quantum noise. Identical frames would flatter any server that
    deduplicates or compresses, so each slice gets a smooth zoom + shift that
    varies along z, and seeded Gaussian noise.
    """
    t = index / max(count - 1, 1)
    rows, cols = base.shape
    scale = 1.0 + 0.12 * np.sin(np.pi * t) - 0.06  # 0.94 .. 1.06
    dy = 6.0 * np.sin(2 * np.pi * t)
    dx = 4.0 * np.cos(2 * np.pi * t) - 4.0
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    src_y = np.rint(cy + (np.arange(rows) - cy - dy) / scale).astype(np.intp)
    src_x = np.rint(cx + (np.arange(cols) - cx - dx) / scale).astype(np.intp)
    valid = ((src_y >= 0) & (src_y < rows))[:, None] & ((src_x >= 0) & (src_x < cols))[None, :]
    out = base[np.clip(src_y, 0, rows - 1)[:, None], np.clip(src_x, 0, cols - 1)[None, :]]
    out = out.astype(np.int32)

    fill = padding if padding is not None else int(base.min())
    inside = valid & (out != fill)
    rng = np.random.default_rng([seed, index])
    # Slow brightness drift along z plus per-pixel noise, only inside the
    # field of view so the padding value keeps its meaning.
    drift = round(float(15 * np.sin(3 * np.pi * t)))
    noise = rng.normal(0.0, 6.0, size=out.shape).round().astype(np.int32)
    out = np.where(inside, out + drift + noise, fill)
    out = np.where(valid, out, fill)
    return np.clip(out, lo, hi).astype(base.dtype)


def build_ct_series(root: Path, slices: int, seed: int) -> dict:
    src = pydicom.dcmread(wg04_path(CT_SOURCE))
    base = src.pixel_array
    bits = int(src.BitsStored)
    if src.PixelRepresentation == 1:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    padding = int(src.PixelPaddingValue) if "PixelPaddingValue" in src else None
    thickness = float(src.SliceThickness)
    x0, y0, z0 = (float(v) for v in src.ImagePositionPatient)

    study_uid = _uid(seed, "ct", "study")
    series_uid = _uid(seed, "ct", "series")
    sops: list[str] = []
    hashes: list[str] = []
    files: list[str] = []
    for i in range(slices):
        ds = pydicom.dcmread(wg04_path(CT_SOURCE))
        _drop_group_lengths(ds)
        sop = _uid(seed, "ct", "sop", i)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop
        ds.PatientName = "BENCH^CT300"
        ds.PatientID = "BENCHCT0001"
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.ContentTime = f"1015{i % 60:02d}"
        ds.AccessionNumber = "ACCCT0001"
        ds.StudyDescription = "BENCH CT HEAD 300 SLICES"
        ds.SeriesDescription = "AXIAL 5mm"
        ds.StudyID = "1"
        ds.InstanceNumber = i + 1
        # Head-first supine axial stack: table moves towards the feet.
        z = z0 - i * thickness
        ds.ImagePositionPatient = [x0, y0, round(z, 3)]
        ds.SliceLocation = round(z, 3)
        ds.SpacingBetweenSlices = thickness
        pixels = vary_slice(base, i, slices, seed, padding, lo, hi)
        ds.PixelData = pixels.tobytes()  # same dtype/BitsStored/PixelRepresentation
        rel = f"ct/{i + 1:04d}.dcm"
        _save(ds, root / rel)
        sops.append(sop)
        hashes.append(hashlib.sha256(ds.PixelData).hexdigest())
        files.append(rel)
    return {
        "files": files,
        "ct_study_uid": study_uid,
        "ct_series_uid": series_uid,
        "ct_sop_uids": sops,
        "ct_rows": int(src.Rows),
        "ct_columns": int(src.Columns),
        "ct_frame_sha256": hashes,
        "patient_names": ["BENCH^CT300"],
    }


def copy_wg04(root: Path) -> dict:
    files: list[str] = []
    names: list[str] = []
    for modality, name in WG04_FILES.items():
        rel = f"wg04/{modality}_{name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wg04_path(name), root / rel)
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        files.append(rel)
        names.append(str(ds.get("PatientName", "")))
    return {"files": files, "patient_names": names}


def build_small_studies(root: Path, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    source = get_testdata_file(SMALL_SOURCE)
    if source is None:
        raise FileNotFoundError(SMALL_SOURCE)
    first_day = dt.date(2010, 1, 1).toordinal()
    last_day = dt.date(2024, 12, 31).toordinal()
    files: list[str] = []
    names: list[str] = []
    for i in range(count):
        ds = pydicom.dcmread(source)
        _drop_group_lengths(ds)
        # ~10% DOE so a prefix query has real work but a clear answer.
        surname = "DOE" if rng.random() < 0.1 else rng.choice(SURNAMES[1:])
        name = f"{surname}^{rng.choice(GIVEN_NAMES)}"
        day = dt.date.fromordinal(rng.randint(first_day, last_day)).strftime("%Y%m%d")
        ds.PatientName = name
        ds.PatientID = f"BENCH{i + 1:05d}"
        ds.PatientBirthDate = dt.date(
            rng.randint(1930, 2015), rng.randint(1, 12), rng.randint(1, 28)
        ).strftime("%Y%m%d")
        ds.PatientSex = rng.choice("MF")
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.StudyTime = ds.SeriesTime = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}00"
        ds.StudyDescription = rng.choice(STUDY_DESCRIPTIONS)
        ds.AccessionNumber = f"ACC{i + 1:07d}"
        ds.ReferringPhysicianName = rng.choice(REFERRING)
        ds.StudyID = str(i + 1)
        ds.StudyInstanceUID = _uid(seed, "small", i, "study")
        ds.SeriesInstanceUID = _uid(seed, "small", i, "series")
        ds.SOPInstanceUID = _uid(seed, "small", i, "sop")
        ds.InstanceNumber = 1
        rel = f"small/{i + 1:04d}.dcm"
        _save(ds, root / rel)
        files.append(rel)
        names.append(name)
    return {"files": files, "patient_names": names}


def corpus_size(quick: bool) -> tuple[int, int]:
    """(CT slices, small studies) of the quick (smoke run) or the full corpus."""
    return (QUICK_CT_SLICES, QUICK_SMALL_STUDIES) if quick else (FULL_CT_SLICES, FULL_SMALL_STUDIES)


def corpus_dir(cache: Path, ct_slices: int, small_studies: int, seed: int) -> Path:
    return cache / f"v{CORPUS_VERSION}-ct{ct_slices}-small{small_studies}-seed{seed}"


def build_corpus(
    ct_slices: int = FULL_CT_SLICES,
    small_studies: int = FULL_SMALL_STUDIES,
    seed: int = DEFAULT_SEED,
    cache: Path | None = None,
    log=print,
) -> Corpus:
    """Build (or reuse from cache) a corpus and describe it."""
    root = corpus_dir(cache or default_cache_dir(), ct_slices, small_studies, seed)
    manifest = root / "manifest.json"
    if manifest.exists():
        return load_corpus(root)

    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"building corpus in {root} ({ct_slices} CT slices, {small_studies} small studies)")
    ct = build_ct_series(tmp, ct_slices, seed)
    wg = copy_wg04(tmp)
    small = build_small_studies(tmp, small_studies, seed)
    info = {
        "version": CORPUS_VERSION,
        "seed": seed,
        "ct_slices": ct_slices,
        "small_studies": small_studies,
        "files": ct["files"] + wg["files"] + small["files"],
        "ct_study_uid": ct["ct_study_uid"],
        "ct_series_uid": ct["ct_series_uid"],
        "ct_sop_uids": ct["ct_sop_uids"],
        "ct_rows": ct["ct_rows"],
        "ct_columns": ct["ct_columns"],
        "ct_frame_sha256": ct["ct_frame_sha256"],
        # The WG04 files each form their own study (checked at build time
        # by the distinct UIDs in the source files).
        "study_count": 1 + len(wg["files"]) + small_studies,
        "patient_names": ct["patient_names"] + wg["patient_names"] + small["patient_names"],
    }
    (tmp / "manifest.json").write_text(json.dumps(info, indent=1))
    # Atomic publish: a half-built corpus is never mistaken for a cached one.
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return load_corpus(root)


def load_corpus(root: Path) -> Corpus:
    info = json.loads((root / "manifest.json").read_text())
    if info.get("version") != CORPUS_VERSION:
        raise ValueError(f"{root}: corpus version {info.get('version')} != {CORPUS_VERSION}")
    del info["version"]
    return Corpus(root=root, **info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the DICOMweb benchmark corpus")
    p.add_argument("--quick", action="store_true", help="small corpus for smoke runs")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--cache", type=Path, default=None)
    args = p.parse_args(argv)
    corpus = build_corpus(*corpus_size(args.quick), args.seed, args.cache)
    summary = {k: v for k, v in asdict(corpus).items() if not isinstance(v, list)}
    summary["files"] = len(corpus.files)
    summary["bytes"] = corpus.total_bytes()
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
