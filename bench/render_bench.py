"""Rendering benchmark, in process: ``python -m bench.render_bench``.

The 1955x1841 CR (WG04 RG1, 15 bits) is made into a layered master with ``make_master``; then:

1. A 256x256 JPEG thumbnail rendered the way the server does (decode only the resolution level the
   output needs, and for thumbnails only the quality layers the display can show) against a full
   decode of the same master followed by the same windowing, resize and JPEG encoding.
   Target: a small fraction of the full decode.
2. Per request, what cutting the master costs and gives: ``cut`` (layers, dropped levels), then
   decoding the cut, against decoding the whole master.

Times are medians of repeated runs on this machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from bench.measure import median_ms, table
from storage.codec import cut, decode, info, openjpeg_version
from storage.mastering.make import make_master
from storage.render import (
    THUMBNAIL_LAYER_TOLERANCE,
    RenderOptions,
    Viewport,
    display_gain,
    display_values,
    encode,
    fit,
    quality_layers,
    read_attributes,
    render_frame,
    resolution_level,
    thumbnail,
    voi_plan,
)

SOURCE = "RG1_UNCR.dcm"
THUMB = 256


def full_decode_then_resize(path: Path, codestream: bytes, size: int) -> bytes:
    """The naive way: every pixel of every layer, then the same pipeline and a resize."""
    ds = read_attributes(path, 0)
    photometric = str(ds.PhotometricInterpretation)
    geometry = fit(int(ds.Columns), int(ds.Rows), Viewport(size, size))
    voi = voi_plan(ds, None)
    image = Image.fromarray(display_values(decode(codestream), ds, photometric, voi))
    image = image.resize(geometry.size, Image.Resampling.LANCZOS)
    return encode(image, "image/jpeg", 75)


def grey(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg))).astype(np.int64)


def thumbnail_rows(
    received: Path, master: Path, codestream: bytes, errors: tuple[int, ...], repeat: int
) -> tuple[list[list[str]], float, float]:
    ts = str(pydicom.dcmread(master, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    viewport = Viewport(THUMB, THUMB)
    cases: list[tuple[str, Callable[[], bytes]]] = [
        ("full decode + resize (baseline)", lambda: full_decode_then_resize(master, codestream, THUMB)),
        (
            "thumbnail: level + layers",
            lambda: thumbnail(master, ts, codestream, 1, viewport=viewport, layer_errors=errors),
        ),
        (
            "rendered: level, all layers",
            lambda: render_frame(master, ts, codestream, 1, RenderOptions(viewport=viewport)),
        ),
        (
            "received file (master pending)",
            lambda: render_frame(received, "1.2.840.10008.1.2.1", None, 1, RenderOptions(viewport=viewport)),
        ),
    ]
    baseline_image = grey(cases[0][1]())
    rows = []
    times = {}
    for name, fn in cases:
        ms = median_ms(fn, repeat)
        times[name] = ms
        out = fn()
        diff = np.abs(grey(out) - baseline_image)
        rows.append(
            [
                name,
                f"{ms:.1f}",
                f"{ms / times[cases[0][0]]:.3f}",
                f"{len(out):,}",
                f"{'x'.join(map(str, Image.open(io.BytesIO(out)).size))}",
                f"{diff.mean():.2f}",
            ]
        )
    return rows, times[cases[0][0]], times[cases[1][0]]


def cut_rows(codestream: bytes, repeat: int) -> list[list[str]]:
    head = info(codestream)
    full_ms = median_ms(lambda: decode(codestream), repeat)

    def drop_for(side: int) -> int:
        return resolution_level(fit(head.width, head.height, Viewport(side, side)), head.levels)

    requests = [
        ("whole master", None, 0),
        ("layers=1", 1, 0),
        ("layers=1 fsiz=512", 1, drop_for(512)),
        ("layers=1 fsiz=256", 1, drop_for(256)),
        ("layers=6 fsiz=256", None, drop_for(256)),
        ("layers=1 fsiz=128", 1, drop_for(128)),
    ]
    rows = []
    for name, layers, drop in requests:
        piece = cut(codestream, layers=layers, drop_levels=drop)
        cut_ms = median_ms(
            lambda layers=layers, drop=drop: cut(codestream, layers=layers, drop_levels=drop), repeat * 10
        )
        dec_ms = median_ms(lambda piece=piece: decode(piece), repeat)
        shape = decode(piece).shape
        total = cut_ms + dec_ms
        rows.append(
            [
                name,
                f"D={drop}",
                f"{shape[1]}x{shape[0]}",
                f"{len(piece):,}",
                f"{cut_ms:.3f}",
                f"{dec_ms:.1f}",
                f"{total / full_ms:.3f}",
            ]
        )
    rows.append(
        [
            "(full decode, reference)",
            "",
            f"{head.width}x{head.height}",
            f"{len(codestream):,}",
            "",
            f"{full_ms:.1f}",
            "1.000",
        ]
    )
    return rows


def level_error_rows(codestream: bytes, errors: tuple[int, ...]) -> list[list[str]]:
    """Max |error| of each layer prefix at reduced levels, against all layers at the same level:
    the thumbnail layer rule assumes these stay near the full-resolution ladder."""
    head = info(codestream)
    rows = [["0 (ladder)", *map(str, errors)]]
    for drop in range(1, min(head.levels, 3) + 1):
        reference = decode(cut(codestream, layers=None, drop_levels=drop)).astype(np.int64)
        row = [str(drop)]
        for layers in range(1, head.layers + 1):
            approx = decode(cut(codestream, layers=layers, drop_levels=drop)).astype(np.int64)
            row.append(str(int(np.abs(approx - reference).max())))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (default 7)")
    args = parser.parse_args()

    received = Path(get_testdata_file(SOURCE))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        master = make_master(received, Path(tmp))
        made_s = time.perf_counter() - start
        data = master.path.read_bytes()
        codestream = b"".join(data[off : off + length] for off, length in master.parsed.frames[0])
        errors = tuple(step["max_error"] for step in master.fidelity[0]["layers"])
        head = info(codestream)
        print(
            f"OpenJPEG {openjpeg_version()}; {SOURCE}: {head.width}x{head.height}, {head.precision} bits, "
            f"{head.levels} levels, {head.layers} layers; master {len(codestream):,} B made in {made_s:.1f} s"
        )
        print(f"layer ladder, max error per layer prefix: {errors}")

        rows, full_ms, thumb_ms = thumbnail_rows(received, master.path, codestream, errors, args.repeat)
        print()
        print(f"{THUMB}x{THUMB} JPEG thumbnail of the CR, median of {args.repeat} runs")
        print(table(["path", "ms", "ratio", "bytes", "size", "mean |diff|"], rows))
        print(
            f"thumbnail costs {thumb_ms / full_ms:.1%} of full decode + resize "
            f"({thumb_ms:.1f} ms vs {full_ms:.1f} ms, {full_ms / thumb_ms:.0f}x faster)"
        )
        print("mean |diff|: grey levels against the baseline's JPEG (both JPEG q75)")

        ds = read_attributes(master.path, 0)
        layers = quality_layers(
            errors, display_gain(ds, str(ds.PhotometricInterpretation), voi_plan(ds, None))
        )
        print(
            f"the thumbnail decoded {layers or head.layers} of {head.layers} layers (its own window, "
            f"tolerance {THUMBNAIL_LAYER_TOLERANCE} grey levels)"
        )

        print()
        print("Max |error| (stored units) of the first L layers at level D, against all layers at that level")
        print(
            table(["D", *(f"L={n}" for n in range(1, head.layers + 1))], level_error_rows(codestream, errors))
        )

        print()
        print("Cut per request (cut = codestream cut, dec = OpenJPEG decode of the cut)")
        print(
            table(
                ["request", "levels", "decoded", "bytes", "cut ms", "dec ms", "(cut+dec)/full"],
                cut_rows(codestream, args.repeat),
            )
        )


if __name__ == "__main__":
    main()
