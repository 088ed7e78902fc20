"""Fidelity of a lossy frame against its original: PSNR, maximum absolute error and SSIM.

PSNR and the maximum error are measured exactly as the fidelity ladder measures them at ingest
(storage.codec.fidelity: peak 2^precision - 1, the mean squared error over every sample), so a derived
frame's QA repeats the ladder's figures for the layers it kept (tests/test_lifecycle.py checks it).

SSIM is Wang, Bovik, Sheikh and Simoncelli (2004), "Image quality assessment: from error visibility to
structural similarity", with a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, L = 2^bits - 1 and the sample
covariance (N - 1), averaged over every window that lies inside the image: what scikit-image's
`structural_similarity(..., data_range=L)` computes with its defaults. scikit-image would bring scipy
and more (about 100 MB) for this one function. The window sums come from summed-area tables in int64,
which are exact for 16-bit samples (the largest table entry, 65535^2 x 2^28 samples, is below 2^63), so
no precision is lost to cancellation in flat regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WINDOW = 7
K1, K2 = 0.01, 0.03


@dataclass(frozen=True)
class FrameQA:
    number: int
    layers: int
    bytes: int
    ratio: float
    psnr: float | None  # None: identical
    max_error: int
    ssim: float


def _window_sums(a: np.ndarray, w: int) -> np.ndarray:
    """Sum of every w x w window lying inside `a` (int64 in, int64 out)."""
    table = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    return table[w:, w:] - table[:-w, w:] - table[w:, :-w] + table[:-w, :-w]


def _ssim_plane(x: np.ndarray, y: np.ndarray, peak: float) -> float:
    w = min(WINDOW, x.shape[0], x.shape[1])
    if w < 2:
        return 1.0 if np.array_equal(x, y) else 0.0
    n = w * w
    x64, y64 = x.astype(np.int64), y.astype(np.int64)
    sx, sy = _window_sums(x64, w), _window_sums(y64, w)
    sxx, syy, sxy = _window_sums(x64 * x64, w), _window_sums(y64 * y64, w), _window_sums(x64 * y64, w)
    # n * (sample covariance) * (n - 1) = n * sum(xy) - sum(x) sum(y): exact in int64.
    norm = float(n * (n - 1))
    vx = (n * sxx - sx * sx) / norm
    vy = (n * syy - sy * sy) / norm
    cov = (n * sxy - sx * sy) / norm
    mx, my = sx / n, sy / n
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(original: np.ndarray, other: np.ndarray, bits: int) -> float:
    """Mean SSIM of two images of the same shape ((rows, cols) or (rows, cols, samples): the mean over
    samples), with L = 2^bits - 1."""
    if original.shape != other.shape:
        raise ValueError(f"shapes differ: {original.shape} and {other.shape}")
    peak = float((1 << bits) - 1)
    if original.ndim == 2:
        return _ssim_plane(original, other, peak)
    return float(
        np.mean([_ssim_plane(original[..., c], other[..., c], peak) for c in range(original.shape[2])])
    )


def psnr_and_max_error(original: np.ndarray, other: np.ndarray, bits: int) -> tuple[float | None, int]:
    """(PSNR in dB against 2^bits - 1, None when identical; maximum absolute error), as the ladder
    measures them."""
    diff = other.astype(np.int32) - original.astype(np.int32)
    if not diff.size:
        return None, 0
    error = int(np.abs(diff).max())
    mse = float(np.mean(np.square(diff, dtype=np.float64)))
    if mse == 0:
        return None, error
    peak = float((1 << bits) - 1)
    return 10.0 * math.log10(peak * peak / mse), error
