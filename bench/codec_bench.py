"""Codec benchmark on the DICOM WG04 compression set: ``python -m bench.codec_bench``.

Per image: our layered master's size against the WG04 reference lossless J2K
codestream (target <= 1.02x), what layers 1 and 2 cost and give, encode and
verify (decode + compare) time per frame, and the HTJ2K transcode.  Then the
time to cut the 1955x1841 CR master per request (target < 5 ms).  Times are
medians of repeated runs in this process; compare ratios, not absolutes,
on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from bench.measure import median_ms, table
from storage.codec import cut, decode, encode_master, fidelity_ladder, info, openjpeg_version, to_htj2k
from storage.codec.htj2k import decode_htj2k
from storage.codec.layered_j2k import LADDER

IMAGES = [
    ("693", "CT"),
    ("MR2", "MR"),
    ("RG1", "CR"),
    ("RG3", "CR"),
    ("US1", "US RGB"),
]
CUTS = [(1, 0), (2, 0), (3, 0), (5, 0), (1, 2), (2, 1), (6, 1), (3, 3), (6, 5), (4, 2)]


@dataclass
class Frame:
    name: str
    kind: str
    pixels: np.ndarray
    bits: int
    signed: bool
    color: bool
    reference: int  # bytes of the WG04 reference lossless J2K codestream


def load(name: str, kind: str) -> Frame:
    ds = pydicom.dcmread(get_testdata_file(f"{name}_UNCR.dcm"))
    ref = pydicom.dcmread(get_testdata_file(f"{name}_J2KR.dcm"))
    codestream = next(generate_frames(ref.PixelData, number_of_frames=1))
    return Frame(
        name,
        kind,
        ds.pixel_array,
        int(ds.BitsStored),
        bool(ds.PixelRepresentation),
        ds.SamplesPerPixel == 3,
        len(codestream),
    )


def image_rows(frames: list[Frame], repeat: int, threads: int) -> list[list[str]]:
    rows = []
    for f in frames:
        n = max(1, repeat // 3) if f.pixels.size > 2_000_000 else repeat

        def encode(f: Frame = f) -> bytes:
            return encode_master(
                f.pixels, bits_stored=f.bits, signed=f.signed, color=f.color, threads=threads
            )

        master = encode()
        enc_ms = median_ms(encode, n, warm_up=False)

        def verify(master: bytes = master, f: Frame = f) -> None:
            assert np.array_equal(decode(master, threads=threads), f.pixels)

        ver_ms = median_ms(verify, n, warm_up=False)
        ladder = fidelity_ladder(master, f.pixels)
        ht = to_htj2k(master, threads=threads)
        ht_ms = median_ms(lambda master=master: to_htj2k(master, threads=threads), n, warm_up=False)
        ht_dec_ms = median_ms(lambda ht=ht: decode_htj2k(ht), n, warm_up=False)
        h = info(master)
        rows.append(
            [
                f"{f.name} {f.kind}",
                f"{h.width}x{h.height} {'s' if f.signed else 'u'}{f.bits}",
                f"{len(master):,}",
                f"{f.reference:,}",
                f"{len(master) / f.reference:.4f}",
                f"{ladder[0].bytes / len(master):.1%}",
                f"{ladder[1].bytes / len(master):.1%}",
                f"{ladder[0].psnr:.1f}",
                f"{ladder[1].psnr:.1f}",
                f"{enc_ms:.0f}",
                f"{ver_ms:.0f}",
                f"{len(ht):,}",
                f"{ht_ms:.0f}",
                f"{ht_dec_ms:.1f}",
            ]
        )
    return rows


def cut_rows(frame: Frame, repeat: int, threads: int) -> tuple[list[list[str]], float]:
    master = encode_master(
        frame.pixels, bits_stored=frame.bits, signed=frame.signed, color=frame.color, threads=threads
    )
    rows = []
    every = []
    for layers, drop in CUTS:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            piece = cut(master, layers=layers, drop_levels=drop)
            times.append(time.perf_counter() - start)
        every += times
        rows.append(
            [
                f"L={layers} D={drop}",
                f"{len(piece):,}",
                f"{statistics.median(times) * 1000:.3f}",
                f"{max(times) * 1000:.3f}",
            ]
        )
    ht = to_htj2k(master, threads=threads)
    for drop in (1, 3):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            piece = cut(ht, layers=None, drop_levels=drop)
            times.append(time.perf_counter() - start)
        rows.append(
            [
                f"HTJ2K D={drop}",
                f"{len(piece):,}",
                f"{statistics.median(times) * 1000:.3f}",
                f"{max(times) * 1000:.3f}",
            ]
        )
    return rows, statistics.median(every) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per encode/verify (default 5)")
    parser.add_argument("--cuts", type=int, default=200, help="timed cuts per L/D combination (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="OpenJPEG threads per frame (default 1)")
    args = parser.parse_args()

    print(f"OpenJPEG {openjpeg_version()}, threads per frame {args.threads}, ladder {LADDER}")
    frames = [load(name, kind) for name, kind in IMAGES]
    header = [
        "image",
        "size",
        "master B",
        "WG04 ref B",
        "ratio",
        "L1 B%",
        "L2 B%",
        "L1 dB",
        "L2 dB",
        "enc ms",
        "verify ms",
        "HTJ2K B",
        "to HTJ2K ms",
        "HT dec ms",
    ]
    print()
    print(table(header, image_rows(frames, args.repeat, args.threads)))
    print("ratio: master / reference lossless J2K (target <= 1.02); L1/L2 B%: bytes of the first 1/2 layers")
    print("as a share of the master; dB: PSNR, peak 2^BitsStored-1; verify = decode + compare.")

    rows, overall = cut_rows(frames[2], args.cuts, args.threads)
    print()
    print(
        f"Cutting the {frames[2].pixels.shape[1]}x{frames[2].pixels.shape[0]} CR master "
        f"({args.cuts} cuts per combination)"
    )
    print(table(["request", "bytes", "median ms", "max ms"], rows))
    print(f"median over all classic cuts: {overall:.3f} ms (target < 5 ms)")


if __name__ == "__main__":
    main()
