"""Start-up check of the codec stack: can this installation make, cut and transcode a master?

Without it a broken install fails silently: every image is "kept as received" (a missing module looks
like an encoder failure of each instance), `/layers` is 404 and cuts are 406, while `/healthz` says ok.
That happened with a plain `pip install .` when glymur's undeclared `packaging` import was missing. So
the server and the import command run one tiny image through the whole path before they accept work,
and refuse to start with the reason when any step fails.
"""

from __future__ import annotations

import functools

import numpy as np


class CodecStackError(RuntimeError):
    """This installation cannot make layered JPEG 2000 masters; the message says why and what to do."""


def _sample() -> np.ndarray:
    # Signed 12-bit values with structure and noise, like a CT slice: exercises precision, signedness,
    # several decomposition levels and non-empty lossy layers.
    rows, cols = np.mgrid[0:96, 0:80]
    noise = np.random.default_rng(7).integers(-40, 40, size=rows.shape)
    return ((rows * 17 - cols * 11) % 2000 - 1000 + noise).astype(np.int16)


@functools.cache  # a failure raises and is not cached; a success holds for the life of the process
def check_codec_stack() -> str:
    """Encode, verify, cut and transcode one small frame; return the codec versions, or raise."""
    step = "importing the JPEG 2000 codec (glymur, OpenJPEG)"
    try:
        from storage.codec import cut, decode, decode_htj2k, encode_master, openjpeg_version, to_htj2k

        step = "loading OpenJPEG"
        version = openjpeg_version()
        pixels = _sample()
        step = "encoding a layered lossless master"
        master = encode_master(pixels, bits_stored=12, signed=True, color=False)
        step = "decoding the master"
        if not np.array_equal(decode(master), pixels):
            raise CodecStackError("OpenJPEG did not decode a master bit-exact")
        step = "cutting the master (first layer, one level dropped)"
        decode(cut(master, layers=1, drop_levels=1))
        step = "transcoding to HTJ2K (imagecodecs)"
        if not np.array_equal(decode_htj2k(to_htj2k(master)), pixels):
            raise CodecStackError("HTJ2K transcode is not bit-exact")
    except CodecStackError:
        raise
    except Exception as exc:  # any failure here means no masters: say which step and why
        raise CodecStackError(
            f"cannot make layered JPEG 2000 masters: {step} failed: {type(exc).__name__}: {exc}. "
            "Reinstall the server with `pip install .` in a fresh virtual environment "
            "(or set DICOMWEB_OPENJPEG to a libopenjp2 2.5 library)."
        ) from exc
    import imagecodecs

    return f"OpenJPEG {version}, imagecodecs {imagecodecs.__version__}"
