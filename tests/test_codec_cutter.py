"""Cutting layers and resolution levels out of codestreams, checked against OpenJPEG."""

from __future__ import annotations

import math
import struct
from functools import cache

import imagecodecs
import numpy as np
import pytest
from jpylyzer import boxvalidator

from storage.codec import CutError, cut, decode, decode_htj2k, encode_master, info, to_htj2k
from storage.codec.codestream import PLT, parse
from storage.codec.openjpeg import encode_j2k
from tests.conftest import first_frame

WG04 = ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm"]
SMALL = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "OBXXXX1A.dcm", "emri_small.dcm"]
PROGRESSIONS = ["LRCP", "RLCP", "RPCL", "PCRL", "CPRL"]


@cache
def master(name: str) -> bytes:
    pixels, bits, signed, color = first_frame(name)
    return encode_master(pixels, bits_stored=bits, signed=signed, color=color, threads=2)


def jpylyzer_valid(codestream: bytes, fmt: str = "j2c") -> bool:
    options = {
        "validationFormat": fmt,
        "verboseFlag": False,
        "nullxmlFlag": False,
        "packetmarkersFlag": False,
    }
    result = boxvalidator.BoxValidator(options, "contiguousCodestreamBox", codestream).validate()
    return bool(result.isValid)


def assert_cut_matches(source: bytes, layers: int, drop: int) -> bytes:
    """The cut decodes exactly as OpenJPEG decodes the source at (layers, reduce)."""
    piece = cut(source, layers=layers, drop_levels=drop)
    expected = decode(source, layers=layers, reduce=drop, threads=2)
    got = decode(piece, threads=2)
    assert got.shape == expected.shape, (layers, drop)
    assert np.array_equal(got, expected), (layers, drop)
    return piece


@pytest.mark.parametrize("name", WG04 + SMALL)
def test_every_layer_and_level(name: str) -> None:
    source = master(name)
    header = info(source)
    sizes: dict[tuple[int, int], int] = {}
    for layers in range(1, header.layers + 1):
        for drop in range(header.levels + 1):
            piece = assert_cut_matches(source, layers, drop)
            cut_header = info(piece)
            assert cut_header.width == math.ceil(header.width / 2**drop)
            assert cut_header.height == math.ceil(header.height / 2**drop)
            assert (cut_header.layers, cut_header.levels) == (layers, header.levels - drop)
            assert cut_header.plt and cut_header.tlm
            sizes[layers, drop] = len(piece)
    for (layers, drop), size in sizes.items():
        if layers > 1:
            assert size > sizes[layers - 1, drop]
        if drop > 0:
            assert size < sizes[layers, drop - 1]
    assert sizes[header.layers, 0] == len(source)
    assert cut(source, layers=header.layers, drop_levels=0) is source
    assert cut(source, layers=None) is source
    assert cut(source, layers=99) is source


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm", "SC_rgb.dcm"])
def test_jpylyzer_accepts_cuts(name: str) -> None:
    source = master(name)
    header = info(source)
    assert jpylyzer_valid(source)
    for layers, drop in [(1, 0), (2, 1), (header.layers - 1, header.levels), (header.layers, 1)]:
        assert jpylyzer_valid(cut(source, layers=layers, drop_levels=drop)), (layers, drop)


def test_jpylyzer_catches_a_stale_psot() -> None:
    piece = bytearray(cut(master("CT_small.dcm"), layers=2, drop_levels=1))
    sot = parse(bytes(piece)).tile_parts[0].start
    struct.pack_into(">I", piece, sot + 6, struct.unpack_from(">I", piece, sot + 6)[0] - 1)
    assert not jpylyzer_valid(bytes(piece))


def _synthetic(rows: int, cols: int, components: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = np.sin(x / 9.0) * np.cos(y / 13.0) * 900 + 1200
    return [
        np.clip(base + 40 * k + rng.integers(-40, 40, (rows, cols)), 0, 4095).astype(np.int32)
        for k in range(components)
    ]


GEOMETRIES = {
    "default": {},
    "precincts": {"precincts": [(64, 64), (32, 32)]},
    "precincts-rect": {"precincts": [(32, 64), (64, 32)]},
    "tiles": {"tile_size": (128, 64)},
    "tiles-precincts": {"tile_size": (64, 64), "precincts": [(32, 32)]},
    "tile-parts-R": {"tile_size": (128, 128), "tile_parts": "R"},
    "tile-parts-L": {"tile_parts": "L"},
    "tile-parts-C": {"tile_parts": "C", "precincts": [(64, 64)]},
    "sop-eph": {"sop": True, "eph": True, "precincts": [(64, 64)]},
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("progression", range(5), ids=PROGRESSIONS)
@pytest.mark.parametrize("components", [1, 3])
def test_progressions_precincts_tiles(geometry: str, progression: int, components: int) -> None:
    planes = _synthetic(203, 256, components)
    source = encode_j2k(
        planes,
        precision=12,
        signed=False,
        color=components == 3,
        numresolution=4,
        rates=[60.0, 15.0, 0.0],
        progression=progression,
        **GEOMETRIES[geometry],
    )
    assert info(source).progression == PROGRESSIONS[progression]
    source_parts = len(parse(source).tile_parts)
    for layers in range(1, 4):
        for drop in range(4):
            piece = assert_cut_matches(source, layers, drop)
            cut_parts = len(parse(piece).tile_parts)
            assert cut_parts <= source_parts
            if source_parts > info(source).tiles and layers > 1 and drop < 3:
                # Tile-part divisions survive the cut: fewer, but not merged away.
                assert cut_parts > info(source).tiles


def test_image_offset() -> None:
    # OpenJPEG's reduce=D output of an image with an odd X offset has one
    # column too many (ceil(x1/2^D) - floor(x0/2^D)); the cut follows 15444-1
    # B.5 (ceil - ceil), and every column it has matches.
    source = encode_j2k(
        _synthetic(150, 170, 1),
        precision=12,
        signed=False,
        color=False,
        numresolution=4,
        rates=[20.0, 0.0],
        offset=(13, 7),
    )
    for drop in range(4):
        piece = cut(source, layers=1, drop_levels=drop)
        got = decode(piece)
        assert got.shape == (
            math.ceil(157 / 2**drop) - math.ceil(7 / 2**drop),
            math.ceil(183 / 2**drop) - math.ceil(13 / 2**drop),
        )
        expected = decode(source, layers=1, reduce=drop)
        assert np.array_equal(expected[:, : got.shape[1]], got)


def _with_marker(codestream: bytes, segment: bytes) -> bytes:
    """Insert a marker segment just before the first SOT."""
    at = parse(codestream).main_end
    return codestream[:at] + segment + codestream[at:]


def test_refusals() -> None:
    source = master("CT_small.dcm")
    levels = info(source).levels
    poc = struct.pack(">HHBBHBBB", 0xFF5F, 9, 0, 0, 1, levels + 1, 1, 0)
    with pytest.raises(CutError, match="POC"):
        cut(_with_marker(source, poc), layers=1)
    with pytest.raises(CutError, match="PPM"):
        cut(_with_marker(source, struct.pack(">HHB", 0xFF60, 3, 0)), layers=1)
    with pytest.raises(CutError, match="only"):
        cut(source, layers=1, drop_levels=levels + 1)
    with pytest.raises(CutError):
        cut(source, layers=0)
    with pytest.raises(CutError, match="SOC"):
        cut(b"not a codestream", layers=1)
    no_plt = encode_j2k(
        _synthetic(64, 64, 1),
        precision=12,
        signed=False,
        color=False,
        numresolution=3,
        rates=[10.0, 0.0],
        plt=False,
    )
    assert not info(no_plt).plt
    with pytest.raises(CutError, match="PLT"):
        cut(no_plt, layers=1)
    tiled = encode_j2k(
        _synthetic(200, 200, 1),
        precision=12,
        signed=False,
        color=False,
        numresolution=4,
        rates=[10.0, 0.0],
        tile_size=(100, 100),
    )
    assert_cut_matches(tiled, 1, 2)  # 100 is divisible by 4
    with pytest.raises(CutError, match="divisible"):
        cut(tiled, layers=1, drop_levels=3)


def test_plt_and_tlm_regenerated() -> None:
    source = master("MR2_UNCR.dcm")
    piece = parse(cut(source, layers=3, drop_levels=2))
    (tile_part,) = piece.tile_parts
    assert sum(tile_part.plt or []) == tile_part.end - tile_part.body_start
    assert len(tile_part.plt or []) == 3 * (info(source).levels - 2 + 1)
    assert [s.marker for s in tile_part.segments] == [PLT]
    tlm = next(s for s in piece.main if s.marker == 0xFF55)
    body = bytes(piece.data[tlm.start + 4 : tlm.end])
    assert struct.unpack(">BBBI", body) == (0, 0x50, 0, tile_part.end - tile_part.start)


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm", "emri_small.dcm"])
def test_htj2k_cut_by_levels(name: str) -> None:
    ht = to_htj2k(master(name))
    header = info(ht)
    assert cut(ht, layers=None) is ht
    for drop in range(header.levels + 1):
        piece = cut(ht, layers=1, drop_levels=drop)
        assert np.array_equal(decode_htj2k(piece), decode_htj2k(ht, drop))
        assert np.array_equal(decode(piece), decode(ht, reduce=drop))
        cut_header = info(piece)
        assert cut_header.htj2k and cut_header.tlm and cut_header.progression == "RPCL"
        assert cut_header.tile_parts == header.levels - drop + 1
        assert jpylyzer_valid(piece, "jhc")


def test_htj2k_without_resolution_tile_parts_is_refused() -> None:
    ht = imagecodecs.htj2k_encode(_synthetic(64, 64, 1)[0].astype(np.uint16), reversible=True, resolutions=3)
    assert info(ht).htj2k and not info(ht).plt
    with pytest.raises(CutError, match="HTJ2K"):
        cut(ht, layers=None, drop_levels=1)
