"""Per-layer fidelity of a master: what each quality layer costs and gives.

The index stores this ladder so a server can pick a layer for a byte budget or
a quality floor without decoding anything at request time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .codestream import info
from .cutter import cut
from .layered_j2k import decode, psnr


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


def fidelity_ladder(codestream: bytes, original: np.ndarray) -> list[LayerFidelity]:
    """Measure every layer prefix of ``codestream`` against ``original`` pixels."""
    header = info(codestream)
    peak = float((1 << header.precision) - 1)
    reference = original.astype(np.int64)
    ladder = []
    for layers in range(1, header.layers + 1):
        part = cut(codestream, layers=layers)
        decoded = decode(part)
        if decoded.shape != original.shape:
            raise ValueError(f"decoded shape {decoded.shape} differs from original {original.shape}")
        error = int(np.abs(decoded.astype(np.int64) - reference).max()) if original.size else 0
        ladder.append(
            LayerFidelity(
                layers=layers,
                bytes=len(part),
                psnr=psnr(original, decoded, peak),
                max_error=error,
                lossless=error == 0,
            )
        )
    return ladder
