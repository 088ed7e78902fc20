"""Layered lossless masters: OpenJPEG setup, bit-exact encode/decode, fidelity, HTJ2K."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from storage.codec import (
    LADDER,
    MasterNotPossible,
    decode,
    decode_htj2k,
    encode_master,
    fidelity_ladder,
    info,
    openjpeg_version,
    to_htj2k,
)
from storage.codec.layered_j2k import decomposition_levels
from storage.codec.openjpeg import OpenJPEGError, bundled_library, glymur_module
from tests.conftest import first_frame

WG04 = ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm"]
SMALL = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "OBXXXX1A.dcm", "emri_small.dcm", "SC_rgb_16bit.dcm"]
ROOT = Path(__file__).resolve().parents[1]


@cache
def master(name: str) -> bytes:
    pixels, bits, signed, color = first_frame(name)
    return encode_master(pixels, bits_stored=bits, signed=signed, color=color, threads=2)


def test_openjpeg_is_loaded_without_system_package() -> None:
    major, minor, _ = (int(x) for x in openjpeg_version().split("."))
    assert (major, minor) >= (2, 5)
    assert glymur_module().version.openjpeg_version == openjpeg_version()
    assert bundled_library() is not None


def test_env_override_and_late_glymur_import() -> None:
    # A fresh interpreter that imported glymur first (it found no library) and
    # names the library explicitly: the module must still end up working.
    code = (
        "import glymur\n"
        "from storage.codec.openjpeg import openjpeg_version, glymur_module\n"
        "print(openjpeg_version(), glymur_module().version.openjpeg_version)\n"
    )
    env = {"DICOMWEB_OPENJPEG": str(bundled_library()), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [openjpeg_version()] * 2


@pytest.mark.parametrize("name", WG04 + SMALL)
def test_master_is_bit_exact_and_well_formed(name: str) -> None:
    pixels, bits, signed, color = first_frame(name)
    data = master(name)
    assert data[:4] == b"\xff\x4f\xff\x51"  # raw codestream, SIZ first
    header = info(data)
    assert (header.width, header.height) == (pixels.shape[1], pixels.shape[0])
    assert header.components == (3 if color else 1)
    assert (header.precision, header.signed) == (bits, signed)
    assert header.progression == "LRCP"
    assert header.layers == len(LADDER) >= 5
    assert header.reversible and header.plt and header.tlm and header.tiles == 1
    assert header.mct == color
    assert header.levels == decomposition_levels(*pixels.shape[:2])
    assert math.ceil(max(pixels.shape[:2]) / 2**header.levels) <= 64
    decoded = decode(data)
    assert decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels)
    if bits <= 8:
        assert decoded.dtype == (np.int8 if signed else np.uint8)
    else:
        assert decoded.dtype == (np.int16 if signed else np.uint16)


@pytest.mark.parametrize("name", WG04)
def test_master_size_close_to_wg04_reference(name: str) -> None:
    reference = pydicom.dcmread(get_testdata_file(name.replace("_UNCR", "_J2KR")))
    codestream = next(generate_frames(reference.PixelData, number_of_frames=1))
    assert len(master(name)) <= 1.02 * len(codestream)


def test_every_frame_of_a_multiframe_file() -> None:
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    for pixels in ds.pixel_array:
        data = encode_master(pixels, bits_stored=12, signed=False, color=False)
        assert np.array_equal(decode(data), pixels)


@pytest.mark.parametrize(
    ("dtype", "bits", "signed", "low", "high"),
    [
        (np.int8, 8, True, -128, 127),
        (np.uint8, 8, False, 0, 255),
        (np.uint8, 3, False, 0, 7),
        (np.int16, 12, True, -2048, 2047),
        (np.int16, 16, True, -32768, 32767),
        (np.uint16, 16, False, 0, 65535),
        (np.uint16, 9, False, 0, 511),
        (np.uint32, 16, False, 0, 65535),  # wide container, 16-bit values
    ],
)
def test_extremes_round_trip(dtype: type, bits: int, signed: bool, low: int, high: int) -> None:
    rng = np.random.default_rng(bits)
    pixels = rng.integers(low, high + 1, (37, 53), dtype=np.int64)
    pixels[0, 0], pixels[-1, -1] = low, high
    pixels = pixels.astype(dtype)
    data = encode_master(pixels, bits_stored=bits, signed=signed, color=False)
    assert np.array_equal(decode(data), pixels)
    assert (info(data).precision, info(data).signed) == (bits, signed)
    # HTJ2K keeps precision below the 8/16-bit container (SIZ patch + DC offset).
    ht = to_htj2k(data)
    assert (info(ht).precision, info(ht).signed) == (bits, signed)
    assert np.array_equal(decode_htj2k(ht), pixels)
    assert np.array_equal(decode(ht), pixels)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (2, 2), (3, 130), (65, 65), (64, 64)])
def test_tiny_and_thin_images(shape: tuple[int, int]) -> None:
    pixels = np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape) % 4096
    data = encode_master(pixels, bits_stored=12, signed=False, color=False)
    assert np.array_equal(decode(data), pixels)


def test_decomposition_levels() -> None:
    assert decomposition_levels(64, 64) == 1
    assert decomposition_levels(512, 512) == 3
    assert decomposition_levels(1955, 1841) == 5
    assert decomposition_levels(1, 1) == 0
    assert decomposition_levels(3, 4000) == 1


@pytest.mark.parametrize(
    ("pixels", "bits", "signed", "color"),
    [
        (np.zeros((8, 8), np.float32), 16, False, False),  # float
        (np.zeros((8, 8), np.uint32), 32, False, False),  # 32-bit
        (np.zeros((8, 8), np.uint32), 17, False, False),  # more than 16 bits
        (np.zeros((8, 8), np.uint8), 1, False, False),  # 1-bit
        (np.zeros((8, 8), bool), 1, False, False),
        (np.full((8, 8), 4096, np.uint16), 12, False, False),  # high bits set
        (np.full((8, 8), -1, np.int16), 12, False, False),  # negative but unsigned
        (np.full((8, 8), 2048, np.int16), 12, True, False),  # beyond signed 12 bits
        (np.zeros((8, 8), np.uint8), 8, False, True),  # colour needs (rows, cols, 3)
        (np.zeros((8, 8, 4), np.uint8), 8, False, True),
        (np.zeros((8, 8, 3), np.uint8), 8, False, False),
        (np.zeros((0, 8), np.uint8), 8, False, False),
    ],
)
def test_unsupported_input_raises(pixels: np.ndarray, bits: int, signed: bool, color: bool) -> None:
    with pytest.raises(MasterNotPossible):
        encode_master(pixels, bits_stored=bits, signed=signed, color=color)


def test_threads_share_the_library() -> None:
    # Codec work runs in a thread pool: ctypes callbacks and error handlers
    # are per call, so concurrent encodes and decodes must not interfere.
    pixels, bits, signed, color = first_frame("CT_small.dcm")

    def round_trip(_: int) -> bool:
        data = encode_master(pixels, bits_stored=bits, signed=signed, color=color)
        return np.array_equal(decode(data), pixels) and data == master("CT_small.dcm")

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, range(16)))


def test_decode_errors_are_reported() -> None:
    with pytest.raises(OpenJPEGError):
        decode(master("CT_small.dcm")[:200])


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm"])
def test_fidelity_ladder(name: str) -> None:
    pixels, _, _, _ = first_frame(name)
    data = master(name)
    ladder = fidelity_ladder(data, pixels)
    assert [step.layers for step in ladder] == list(range(1, len(LADDER) + 1))
    sizes = [step.bytes for step in ladder]
    assert sizes == sorted(sizes) and sizes[-1] == len(data)
    assert all(a.psnr <= b.psnr for a, b in pairwise(ladder))
    assert ladder[-1].lossless and ladder[-1].max_error == 0 and ladder[-1].psnr == math.inf
    assert ladder[-1].to_dict()["psnr"] is None
    assert not ladder[0].lossless and ladder[0].max_error > 0
    assert isinstance(ladder[0].to_dict()["psnr"], float)
    # Layer 1 is a small preview.
    assert ladder[0].bytes < 0.06 * len(data)


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", *SMALL])
def test_htj2k_transcode_is_exact(name: str) -> None:
    pixels, bits, signed, _ = first_frame(name)
    source = master(name)
    ht = to_htj2k(source)
    header = info(ht)
    assert header.htj2k and header.progression == "RPCL" and header.tlm
    assert (header.precision, header.signed) == (bits, signed)
    assert header.levels == info(source).levels
    assert header.tile_parts == header.levels + 1  # one tile-part per resolution
    assert np.array_equal(decode_htj2k(ht), pixels)
    assert np.array_equal(decode(ht), pixels)  # OpenJPEG reads it too
