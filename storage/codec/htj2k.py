"""Lossless HTJ2K (ISO 15444-15) transcodes of masters, for DICOM 1.2.840.10008.1.2.4.202.

HTJ2K decodes 10-30x faster than classic JPEG 2000 but has no useful quality
layers, so it is derived from the master on demand: decode the master fully
with OpenJPEG, encode with OpenJPH (imagecodecs): reversible, RPCL, one
tile-part per resolution and a TLM marker (what the RPCL transfer syntax and
OHIF's progressive decoding expect), same number of decomposition levels.

imagecodecs writes the sample container depth (8 or 16) as SIZ precision.  To
keep precision = Bits Stored we patch the Ssiz bytes afterwards; for unsigned
samples the encoder's DC level shift (2^(depth-1)) then differs from the
decoder's (2^(B-1)), so the samples are pre-offset by the difference.  The
quantisation exponents in QCD are left as written: they only allow a bit-plane
more than needed, which costs nothing and keeps CAP consistent.

Known decoder differences, not defects of the codestream: at reduced
resolution OpenJPH (imagecodecs) wraps samples that the 5/3 low-pass band
overshoots (-1 becomes 65535) where OpenJPEG clamps; and a master with 0
decomposition levels (a side of one pixel) gets OpenJPH's default of 5, as
imagecodecs reads ``resolutions=0`` as "default".
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from .codestream import SIZ, info, parse
from .layered_j2k import decode

_TILEPART_RESOLUTIONS = 1


class HTJ2KError(ValueError):
    """The image cannot be transcoded to lossless HTJ2K."""


def to_htj2k(master: bytes, *, threads: int = 1) -> bytes:
    """Lossless HTJ2K codestream with the same pixels and levels as ``master``."""
    header = info(master)
    if not header.reversible:
        raise HTJ2KError("only reversible (lossless) masters can be transcoded losslessly")
    pixels = decode(master, threads=threads)
    return encode_htj2k(
        pixels,
        bits_stored=header.precision,
        signed=header.signed,
        levels=header.levels,
        color=header.mct,
    )


def encode_htj2k(pixels: np.ndarray, *, bits_stored: int, signed: bool, levels: int, color: bool) -> bytes:
    """Reversible RPCL HTJ2K with TLM and one tile-part per resolution."""
    depth = 8 if bits_stored <= 8 else 16
    if bits_stored > 16:
        raise HTJ2KError(f"Bits Stored {bits_stored} > 16 is not supported")
    dtype = np.dtype(f"{'int' if signed else 'uint'}{depth}")
    samples = pixels.astype(dtype, copy=False)
    if not signed and bits_stored < depth:
        offset = (1 << (depth - 1)) - (1 << (bits_stored - 1))
        samples = (pixels.astype(np.int32) + offset).astype(dtype)
    codestream = imagecodecs.htj2k_encode(
        samples,
        reversible=True,
        resolutions=levels,
        tlm=True,
        tilepart=_TILEPART_RESOLUTIONS,
        rgb=color,
    )
    return _set_precision(codestream, bits_stored, signed, depth)


def _set_precision(codestream: bytes | bytearray, bits_stored: int, signed: bool, depth: int) -> bytes:
    cs = parse(memoryview(codestream))
    siz = next(seg for seg in cs.main if seg.marker == SIZ)
    if any(c.precision != depth or c.signed != signed for c in cs.siz.components):
        raise HTJ2KError(f"unexpected SIZ from the HTJ2K encoder: {cs.siz.components}")
    if bits_stored == depth:
        return bytes(codestream)
    out = bytearray(codestream)
    ssiz = (bits_stored - 1) | (0x80 if signed else 0)
    for index in range(len(cs.siz.components)):
        out[siz.start + 40 + 3 * index] = ssiz
    return bytes(out)


def decode_htj2k(codestream: bytes, skipres: int = 0) -> np.ndarray:
    """Decode with OpenJPH, skipping the top ``skipres`` resolution levels."""
    return imagecodecs.htj2k_decode(codestream, skipres=skipres or None)
