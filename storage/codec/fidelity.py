"""Per-layer fidelity of a master: what each quality layer costs and gives.

The index stores this ladder so a server can pick a layer for a byte budget or
a quality floor without decoding anything at request time.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .codestream import info
from .cutter import cut
from .layered_j2k import decode


@dataclass(frozen=True)
class LayerFidelity:
    layers: int  # the first k quality layers
    bytes: int  # size of the codestream cut to those layers
    psnr: float  # dB against peak 2^precision - 1; math.inf when identical
    max_error: int
    lossless: bool

    def to_dict(self) -> dict[str, int | float | bool | None]:
        """JSON-friendly: an infinite PSNR becomes None."""
        out = asdict(self)
        if math.isinf(self.psnr):
            out["psnr"] = None
        return out


# Frames of at least this many samples are decoded with a thread per core (OpenJPEG splits the work
# by code-blocks); smaller ones are not worth the threads' start-up.
THREADED_SAMPLES = 1 << 20


def fidelity_ladder(
    codestream: bytes, original: np.ndarray, *, whole_verified: bool = False
) -> list[LayerFidelity]:
    """Measure every layer prefix of ``codestream`` against ``original`` pixels. With `whole_verified`
    (the caller decoded every layer and found the original exactly), the last prefix is not decoded
    again: it is lossless."""
    header = info(codestream)
    peak = float((1 << header.precision) - 1)
    # Stored values have at most 16 bits: differences fit in int32, half the memory traffic of int64.
    reference = original.astype(np.int32)
    threads = (os.cpu_count() or 1) if original.size >= THREADED_SAMPLES else 1
    ladder = []
    for layers in range(1, header.layers + 1):
        part = cut(codestream, layers=layers)
        if whole_verified and layers == header.layers:
            ladder.append(LayerFidelity(layers, len(part), math.inf, 0, True))
            continue
        decoded = decode(part, threads=threads)
        if decoded.shape != original.shape:
            raise ValueError(f"decoded shape {decoded.shape} differs from original {original.shape}")
        diff = decoded.astype(np.int32) - reference
        error = int(np.abs(diff).max()) if original.size else 0
        mse = float(np.mean(np.square(diff, dtype=np.float64))) if original.size else 0.0
        ladder.append(
            LayerFidelity(
                layers=layers,
                bytes=len(part),
                psnr=math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse),
                max_error=error,
                lossless=error == 0,
            )
        )
    return ladder
