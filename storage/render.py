"""Rendering one frame to an 8-bit JPEG or PNG (PS3.18 8.3.5, PS3.4 N.2); no HTTP here.

Pipeline: stored values -> Modality LUT -> VOI LUT -> presentation (MONOCHROME1 inverted) -> 8 bits
for grey images; RGB as is, PALETTE COLOR through its palette, YBR_FULL(_422) converted to RGB for
colour. Then the source region is cut out, scaled to fit the viewport (never enlarged) and encoded.

A layered JPEG 2000 master is decoded only down to the resolution level the output needs: the
smallest level still at least as large as the output in both dimensions, so the final resampling
only ever shrinks, by less than 2x. For a 256x256 thumbnail of a 2k CR that is level 2 (a sixteenth
of the pixels) and a few percent of the time of a full decode. Anything else (a master not made yet,
or an image that cannot be one) is decoded by pydicom, one frame at a time.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space, get_decoder
from pydicom.uid import UID

from storage.codec import CodestreamError, CutError, cut, decode, info, levels_to_drop
from storage.codec.openjpeg import OpenJPEGError
from storage.errors import BadRequest, CannotProduce
from storage.transfer_syntaxes import syntax

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 75
THUMBNAIL_SIZE = 128  # PS3.18 leaves the thumbnail size to the server
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
# JPEG thumbnails may leave out the quality layers after the first prefix whose measured maximum
# error (the master's fidelity ladder), times the display gain, is at most this many grey levels.
# JPEG at quality 75 itself moves pixels of 256-pixel renderings of the WG04 CR/CT by up to 15-46
# levels (1.3-1.5 on average), so the saving is invisible.
THUMBNAIL_LAYER_TOLERANCE = 2.0
# Lossless either way; on the 2k CR level 6 saves another 10% of bytes for 3.7x the time of level 3.
PNG_COMPRESS_LEVEL = 3
# Resample in two steps beyond this factor (box reduce, then Lanczos): as good to the eye, much faster.
REDUCING_GAP = 3.0


class CannotRender(CannotProduce):
    """This frame cannot be turned into an image (no decoder, an unsupported colour model...)."""


class BadRenderRequest(BadRequest, ValueError):
    """Rendering parameters that make no sense for this image (a region outside it)."""


@dataclass(frozen=True)
class Region:
    """Source region in image pixels (PS3.18 viewport sx, sy, sw, sh). A width or height of None
    reaches the image's edge; a negative one flips the region on that axis."""

    x: int = 0
    y: int = 0
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Viewport:
    """The largest output size; None leaves that dimension free. Aspect ratio is always kept."""

    width: int | None
    height: int | None
    region: Region | None = None


@dataclass(frozen=True)
class Window:
    """VOI window in modality units (after Rescale or the Modality LUT), PS3.3 C.11.2.1.2."""

    center: float
    width: float
    function: str = "linear"  # one of WINDOW_FUNCTIONS


@dataclass(frozen=True)
class RenderOptions:
    viewport: Viewport | None = None
    window: Window | None = None
    quality: int = DEFAULT_QUALITY
    media_type: str = JPEG
    # Maximum error of each quality-layer prefix of this frame's master (its fidelity ladder): when
    # given, fewer layers may be decoded (see THUMBNAIL_LAYER_TOLERANCE). Only for thumbnails.
    layer_errors: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Geometry:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in full-resolution pixels
    size: tuple[int, int]  # output width, height
    flip_x: bool
    flip_y: bool


@dataclass(frozen=True)
class Voi:
    """How grey values become 8 bits: a window, the dataset's VOI LUT, or the frame's range."""

    window: Window | None = None
    lut: bool = False


# ---- entry points -----------------------------------------------------------------------------


def render_frame(
    path: Path, transfer_syntax: str, frame_bytes: bytes | None, number: int, options: RenderOptions
) -> bytes:
    """Frame ``number`` (1-based) of the instance at ``path``, rendered as ``options.media_type``.

    ``frame_bytes`` are the frame's stored bytes when the index can address them (a codestream for
    encapsulated data), else None and the frame is decoded from the file.
    """
    if options.media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render {options.media_type}")
    ds = read_attributes(path, number - 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not rows or not cols:
        raise CannotRender("the instance has no image")
    geometry = fit(cols, rows, options.viewport)
    voi = voi_plan(ds, options.window) if photometric in MONOCHROME else Voi()
    pixels, photometric, level = decode_frame(
        path, ds, transfer_syntax, frame_bytes, number, geometry, options.layer_errors, voi
    )
    image = Image.fromarray(display_values(pixels, ds, photometric, voi))
    return encode(place(image, geometry, level), options.media_type, options.quality)


def thumbnail(
    path: Path,
    transfer_syntax: str,
    frame_bytes: bytes | None,
    number: int,
    *,
    viewport: Viewport | None = None,
    media_type: str = JPEG,
    quality: int = DEFAULT_QUALITY,
    window: Window | None = None,
    layer_errors: tuple[int, ...] | None = None,
) -> bytes:
    """A small rendering: THUMBNAIL_SIZE square unless a viewport is given; JPEG output may skip
    quality layers that no displayed pixel would show (PNG is always from all of them)."""
    options = RenderOptions(
        viewport=viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE),
        window=window,
        quality=quality,
        media_type=media_type,
        layer_errors=layer_errors if media_type == JPEG else None,
    )
    return render_frame(path, transfer_syntax, frame_bytes, number, options)


# ---- attributes -------------------------------------------------------------------------------

# Enhanced multi-frame objects keep rescale and window in functional groups, not at the top level.
FRAME_MACROS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def read_attributes(path: Path, index: int) -> Dataset:
    """The header (no pixel data), with frame ``index``'s functional-group values lifted up."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise  # deleted meanwhile: not a rendering problem
    except (OSError, ValueError) as exc:
        raise CannotRender(f"cannot read the instance: {exc}") from None
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for macro, keywords in FRAME_MACROS.items():
        # PS3.3 C.7.6.16: a macro is in the frame's own group or in the shared one; what it says about
        # the frame wins over any top-level attribute of the same name (which enhanced IODs do not have,
        # but converted files sometimes keep).
        item = next((group[macro][0] for group in groups if group.get(macro)), None)
        if item is None:
            continue
        for keyword in keywords:
            if keyword in item:
                setattr(ds, keyword, item[keyword].value)
            elif keyword in ds:
                delattr(ds, keyword)  # e.g. a top-level VOI LUT Function that the frame's window lacks
    return ds


# ---- geometry ---------------------------------------------------------------------------------


def fit(cols: int, rows: int, viewport: Viewport | None) -> Geometry:
    """Source box and output size: the region scaled to fit the viewport, aspect kept, not enlarged."""
    region = viewport.region if viewport and viewport.region else Region()
    x0, x1, flip_x = _span(region.x, region.width, cols, "horizontal")
    y0, y1, flip_y = _span(region.y, region.height, rows, "vertical")
    width, height = x1 - x0, y1 - y0
    scale = 1.0
    if viewport and viewport.width:
        scale = min(scale, viewport.width / width)
    if viewport and viewport.height:
        scale = min(scale, viewport.height / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Geometry((x0, y0, x1, y1), size, flip_x, flip_y)


def _span(start: int, length: int | None, limit: int, axis: str) -> tuple[int, int, bool]:
    flip = length is not None and length < 0
    end = limit if length is None else start + abs(length)
    end = min(end, limit)
    if start < 0 or start >= end:
        raise BadRenderRequest(f"the {axis} source region lies outside the image ({limit} pixels)")
    return start, end, flip


def resolution_level(geometry: Geometry, levels: int) -> int:
    """Levels to drop: as many as keep the region at least as large as the output on both axes
    (level D of a side n has ceil(n / 2^D) pixels, ISO 15444-1 B.5)."""
    x0, y0, x1, y1 = geometry.box
    return levels_to_drop(x1 - x0, y1 - y0, levels, *geometry.size)


def place(image: Image.Image, geometry: Geometry, level: int) -> Image.Image:
    """Cut the region out of a frame decoded at ``level`` and scale it to the output size."""
    step = 1 << level
    x0, y0, x1, y1 = geometry.box
    if level == 0 and geometry.size == (x1 - x0, y1 - y0):
        out = image.crop(geometry.box) if geometry.box != (0, 0, *image.size) else image
    else:
        box = (x0 / step, y0 / step, min(x1 / step, image.width), min(y1 / step, image.height))
        out = image.resize(geometry.size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)
    if geometry.flip_x:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if geometry.flip_y:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return out


# ---- decoding ---------------------------------------------------------------------------------


def decode_frame(
    path: Path,
    ds: Dataset,
    transfer_syntax: str,
    frame_bytes: bytes | None,
    number: int,
    geometry: Geometry,
    layer_errors: tuple[int, ...] | None,
    voi: Voi,
) -> tuple[np.ndarray, str, int]:
    """(pixels, their photometric interpretation, resolution levels dropped)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if frame_bytes is not None and syntax(transfer_syntax).family is not None:
        decoded = _decode_codestream(frame_bytes, ds, photometric, geometry, layer_errors, voi)
        if decoded is not None:
            return decoded
    pixels, photometric = _decode_pydicom(path, ds, transfer_syntax, frame_bytes, number)
    return pixels, photometric, 0


def _decode_codestream(
    codestream: bytes,
    ds: Dataset,
    photometric: str,
    geometry: Geometry,
    layer_errors: tuple[int, ...] | None,
    voi: Voi,
) -> tuple[np.ndarray, str, int] | None:
    """Decode just the level (and layers) needed, or None when pydicom should handle this frame."""
    try:
        head = info(codestream)
    except CodestreamError:
        return None  # e.g. a JP2 file rather than a raw codestream
    out_photometric = _codestream_photometric(head.components, head.mct, photometric)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if out_photometric is None or head.precision != bits or head.signed != signed:
        return None  # pydicom knows how to reconcile a header that disagrees with the codestream
    if photometric == "PALETTE COLOR":
        # Palette indices are labels, not intensities: averaging them (lower levels) or
        # approximating them (fewer layers) would pick unrelated colours.
        drop, layers = 0, None
    else:
        drop = resolution_level(geometry, head.levels)
        layers = quality_layers(layer_errors, display_gain(ds, out_photometric, voi))
    try:
        try:
            pixels = decode(cut(codestream, layers=layers, drop_levels=drop))
        except CutError:
            pixels = decode(codestream, layers=layers, reduce=drop)  # no PLT: OpenJPEG skips by itself
    except OpenJPEGError:
        return None  # let pydicom's decoders try, and say why if they cannot either
    return pixels, out_photometric, drop


def _codestream_photometric(components: int, mct: bool, photometric: str) -> str | None:
    """What the OpenJPEG output is, or None if it would need more than the codestream says."""
    if components == 1 and (photometric in MONOCHROME or photometric == "PALETTE COLOR"):
        return photometric
    # With the multiple-component transform OpenJPEG returns RGB (YBR_RCT / YBR_ICT, PS3.5 8.2.4).
    if components == 3 and (mct or photometric == "RGB"):
        return "RGB"
    return None


def _decode_pydicom(
    path: Path, ds: Dataset, transfer_syntax: str, frame_bytes: bytes | None, number: int
) -> tuple[np.ndarray, str]:
    uid = UID(transfer_syntax)
    try:
        decoder = get_decoder(uid)
        if frame_bytes is not None and (syntax(transfer_syntax).little_native or uid.is_encapsulated):
            # Just this frame: a multi-frame file is not read whole for one frame.
            source = encapsulate([frame_bytes]) if uid.is_encapsulated else frame_bytes
            pixels, meta = decoder.as_array(source, index=0, **_decode_options(ds, uid))
        else:
            pixels, meta = decoder.as_array(pydicom.dcmread(path), index=number - 1)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "cannot render"
        raise CannotRender(f"cannot decode {uid.name or transfer_syntax}: {exc}") from None
    return pixels, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))


def _decode_options(ds: Dataset, uid: UID) -> dict[str, Any]:
    bits = int(ds.BitsAllocated)
    options: dict[str, Any] = {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "bits_allocated": bits,
        "bits_stored": int(ds.get("BitsStored", bits) or bits),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
        "transfer_syntax_uid": uid,
    }
    if options["samples_per_pixel"] != 1:
        options["planar_configuration"] = int(ds.get("PlanarConfiguration", 0) or 0)
    return options


def quality_layers(layer_errors: tuple[int, ...] | None, gain: float | None) -> int | None:
    """Fewest quality layers whose maximum error, as displayed, stays within the tolerance.

    The errors are the master's measured full-resolution maxima; at reduced levels the same layers
    err about as much or less (measured in bench/render_bench.py), so this is an estimate, not a
    bound. None = all layers."""
    if not layer_errors or gain is None:
        return None
    for layers, error in enumerate(layer_errors, start=1):
        if error * gain <= THUMBNAIL_LAYER_TOLERANCE:
            return layers if layers < len(layer_errors) else None
    return None


def display_gain(ds: Dataset, photometric: str, voi: Voi) -> float | None:
    """Grey levels (of 255) per unit of stored value, where it is known before decoding."""
    if photometric == "RGB":
        return 255 / ((1 << int(ds.get("BitsStored", 8) or 8)) - 1)
    if photometric not in MONOCHROME or voi.window is None or "ModalityLUTSequence" in ds:
        return None
    slope = abs(float(ds.get("RescaleSlope", 1) or 1))
    window = voi.window
    span = window.width - 1 if window.function == "linear" else window.width
    return 255 * slope / span if span > 0 else None


# ---- values to 8 bits -------------------------------------------------------------------------


def voi_plan(ds: Dataset, window: Window | None) -> Voi:
    """The VOI to apply: the requested window, else the dataset's first window, else its VOI LUT,
    else the frame's own range."""
    if window is not None:
        return Voi(window=window)
    dataset_window = _dataset_window(ds)
    if dataset_window is not None:
        return Voi(window=dataset_window)
    if ds.get("VOILUTSequence"):
        return Voi(lut=True)
    return Voi()


def _dataset_window(ds: Dataset) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().lower().replace("_", "-")
    if function not in WINDOW_FUNCTIONS:
        function = "linear"
    # A width the function cannot use is ignored, as if the dataset had no window.
    if not math.isfinite(center) or not math.isfinite(width) or width < (1 if function == "linear" else 1e-9):
        return None
    return Window(center, width, function)


def _first(value: object) -> float:
    # Window Center and Width may hold several alternative windows (VM 1-n): the first is the default.
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def display_values(pixels: np.ndarray, ds: Dataset, photometric: str, voi: Voi) -> np.ndarray:
    """8-bit grey (rows, cols) or RGB (rows, cols, 3) for display."""
    if photometric in MONOCHROME:
        if pixels.ndim != 2:
            raise CannotRender(f"{photometric} frame has shape {pixels.shape}")
        grey = grey_levels(pixels, ds, voi)
        return 255 - grey if _inverted(ds, photometric) else grey
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, ds)
        except (ValueError, KeyError, AttributeError) as exc:
            raise CannotRender(f"cannot apply the palette: {exc}") from None
        return _to_8_bits(rgb, 8 * rgb.dtype.itemsize)
    if photometric.startswith("YBR_FULL"):
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
        photometric = "RGB"
    if photometric == "RGB" and pixels.ndim == 3 and pixels.shape[2] == 3:
        return _to_8_bits(pixels, int(ds.get("BitsStored", 8 * pixels.dtype.itemsize) or 8))
    raise CannotRender(f"cannot render photometric interpretation {photometric or 'unknown'}")


def _inverted(ds: Dataset, photometric: str) -> bool:
    # MONOCHROME1 shows low values bright; an INVERSE Presentation LUT Shape asks for the same.
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _to_8_bits(values: np.ndarray, bits: int) -> np.ndarray:
    if values.dtype == np.uint8 and bits <= 8:
        return values
    shift = max(0, bits - 8)
    return np.clip(values.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def modality_values(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): the LUT sequence if present, else Rescale Slope/Intercept.

    In double precision: in float32 a 16-bit value times a fractional slope plus a large intercept
    (tens of thousands) keeps about two decimal places, and a narrow window magnifies that error."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels, ds).astype(np.float64)
    values = pixels.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1:
        values *= slope
    if intercept:
        values += intercept
    return values


def grey_levels(pixels: np.ndarray, ds: Dataset, voi: Voi) -> np.ndarray:
    """Stored values to 0..255 through the Modality LUT and the VOI (before any inversion)."""
    values = modality_values(pixels, ds)
    if voi.window is not None:
        return _round_to_8_bits(apply_window(values, voi.window))
    if voi.lut:
        try:
            out = apply_voi(values, ds)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
            raise CannotRender(f"cannot apply the VOI LUT: {exc}") from None
        return _round_to_8_bits(out.astype(np.float64) * (255 / ((1 << bits) - 1)))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return _round_to_8_bits((values - low) * (255 / (high - low)))


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 with y_min = 0 and y_max = 255: the result is in [0, 255], not rounded."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "sigmoid":  # C.11.2.1.3.1
        with np.errstate(over="ignore"):  # exp overflows to inf far below the centre: y is then 0
            return 255 / (1 + np.exp(-4 * (x - c) / w))
    if window.function == "linear-exact":  # C.11.2.1.3.2
        return np.clip(((x - c) / w + 0.5) * 255, 0, 255)
    # C.11.2.1.2.1 LINEAR: below c - 0.5 - (w-1)/2 -> 0; above c - 0.5 + (w-1)/2 -> 255; the ramp
    # between is the formula, which clipping reproduces exactly at both ends.
    if w <= 1:
        return np.where(x <= c - 0.5, 0.0, 255.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)


def _round_to_8_bits(y: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


# ---- output -----------------------------------------------------------------------------------


def encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """JPEG baseline (PS3.18 8.7.4) or PNG; the same image always gives the same bytes."""
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
