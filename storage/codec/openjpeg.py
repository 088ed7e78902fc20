"""Make glymur find an OpenJPEG library without any system package.

glymur loads libopenjp2 once, when ``glymur.lib.openjp2`` is first imported, and
sizes its ctypes structures from the version it finds then.  A plain
``pip install`` has no system OpenJPEG, but Pillow's Linux wheels carry
libopenjp2 2.5.x in ``site-packages/pillow.libs/``.  So before glymur is first
imported we write a private ``glymurrc`` naming that library and point
``XDG_CONFIG_HOME`` at it for the duration of the import only.

``DICOMWEB_OPENJPEG`` (path to a libopenjp2) overrides the search.  Every other
codec module imports glymur through :func:`glymur_module` so this runs first.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from storage.config import openjpeg_library_override

ENV_VAR = "DICOMWEB_OPENJPEG"

_lock = threading.Lock()
_glymur: ModuleType | None = None


class OpenJPEGNotFound(RuntimeError):
    """No usable libopenjp2 could be located or loaded."""


def bundled_library() -> Path | None:
    """Return the libopenjp2 shipped inside Pillow's wheel, if any."""
    spec = importlib.util.find_spec("PIL")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    # Linux wheels use pillow.libs/, older ones Pillow.libs/; macOS .dylibs/.
    candidates: list[Path] = []
    for libdir in (site / "pillow.libs", site / "Pillow.libs", site / "PIL" / ".dylibs"):
        if libdir.is_dir():
            candidates += sorted(libdir.glob("libopenjp2*.so*"))
            candidates += sorted(libdir.glob("libopenjp2*.dylib"))
    return candidates[-1] if candidates else None


def library_path() -> Path | None:
    """The library we will ask glymur to load (env override first)."""
    return openjpeg_library_override() or bundled_library()


def _write_config(lib: Path) -> Path:
    """Write a glymurrc naming ``lib`` into a private dir; return the XDG dir."""
    xdg = Path(tempfile.mkdtemp(prefix="dicomweb-glymur-"))
    (xdg / "glymur").mkdir()
    (xdg / "glymur" / "glymurrc").write_text(f"[library]\nopenjp2: {lib}\n")
    return xdg


def _import_with_config(lib: Path | None) -> ModuleType:
    """Import (or re-import) glymur while XDG_CONFIG_HOME names our glymurrc."""
    if lib is None:
        # Nothing bundled: let glymur's own search (glymurrc, ctypes) decide.
        return importlib.import_module("glymur")
    xdg = _write_config(lib)
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(xdg)
    try:
        if "glymur.lib.openjp2" in sys.modules:
            # Someone imported glymur before us and it found no library: its
            # structures were sized for "0.0.0", so reload the wrapper and the
            # version module rather than patch a handle in.
            importlib.reload(sys.modules["glymur.lib.openjp2"])
            importlib.reload(sys.modules["glymur.version"])
        return importlib.import_module("glymur")
    finally:
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved
        # glymur reads its config only while importing; the library is loaded.
        shutil.rmtree(xdg, ignore_errors=True)


def _loaded_version(glymur: ModuleType) -> str:
    return glymur.lib.openjp2.version()


def glymur_module() -> ModuleType:
    """Return glymur, configured to use a working libopenjp2."""
    global _glymur
    if _glymur is not None:
        return _glymur
    with _lock:
        if _glymur is None:
            already = sys.modules.get("glymur.lib.openjp2")
            if already is not None and already.version() != "0.0.0" and not openjpeg_library_override():
                module = importlib.import_module("glymur")
            else:
                module = _import_with_config(library_path())
            if _loaded_version(module) == "0.0.0":
                raise OpenJPEGNotFound(
                    f"glymur found no libopenjp2 (tried {library_path()}); "
                    f"install Pillow's wheel or set {ENV_VAR}"
                )
            _glymur = module
    return _glymur


def openjp2() -> ModuleType:
    """glymur's low-level ctypes wrapper (``glymur.lib.openjp2``)."""
    return glymur_module().lib.openjp2


def openjpeg_version() -> str:
    """Version string of the loaded libopenjp2, e.g. ``"2.5.4"``."""
    return _loaded_version(glymur_module())


# --------------------------------------------------------------------------
# In-memory OpenJPEG streams and whole-image encode/decode.
#
# glymur's high-level classes work on files only; a server cutting and
# verifying thousands of frames should not touch the disk for each one, so
# these helpers drive libopenjp2 through ctypes with memory-backed streams.
# --------------------------------------------------------------------------

_SIZE_MAX = ctypes.c_size_t(-1).value
_READ_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_STREAM_CHUNK = 1 << 20
_prototypes_ready = False


class OpenJPEGError(RuntimeError):
    """libopenjp2 refused to encode or decode."""


def _lib() -> ctypes.CDLL:
    """The loaded libopenjp2, with prototypes for the stream API set once."""
    global _prototypes_ready
    lib = openjp2().OPENJP2
    if not _prototypes_ready:
        vp = ctypes.c_void_p
        lib.opj_stream_create.argtypes = [ctypes.c_size_t, ctypes.c_int32]
        lib.opj_stream_create.restype = vp
        for name, fn in (
            ("opj_stream_set_read_function", _READ_FN),
            ("opj_stream_set_write_function", _READ_FN),
            ("opj_stream_set_skip_function", _SKIP_FN),
            ("opj_stream_set_seek_function", _SEEK_FN),
        ):
            getattr(lib, name).argtypes = [vp, fn]
            getattr(lib, name).restype = None
        lib.opj_stream_set_user_data_length.argtypes = [vp, ctypes.c_uint64]
        lib.opj_stream_set_user_data_length.restype = None
        _prototypes_ready = True
    return lib


class _MemoryStream:
    """An opj_stream_t reading from bytes or writing to a bytearray."""

    def __init__(self, data: bytes | None = None) -> None:
        lib = _lib()
        self.is_input = data is not None
        self.out = bytearray()
        self._src = data if data is not None else b""
        # c_char_p over a bytes object points at its buffer: no copy.
        self._addr = ctypes.cast(ctypes.c_char_p(self._src), ctypes.c_void_p).value or 0
        self._pos = 0
        size = min(max(len(self._src), 4096), _STREAM_CHUNK) if self.is_input else _STREAM_CHUNK
        self.handle = lib.opj_stream_create(size, 1 if self.is_input else 0)
        if not self.handle:
            raise OpenJPEGError("opj_stream_create failed")
        # Keep the callback objects alive as long as the stream.
        self._skip_cb = _SKIP_FN(self._skip)
        self._seek_cb = _SEEK_FN(self._seek)
        if self.is_input:
            self._io_cb = _READ_FN(self._read)
            lib.opj_stream_set_read_function(self.handle, self._io_cb)
            lib.opj_stream_set_user_data_length(self.handle, len(self._src))
        else:
            self._io_cb = _READ_FN(self._write)
            lib.opj_stream_set_write_function(self.handle, self._io_cb)
        lib.opj_stream_set_skip_function(self.handle, self._skip_cb)
        lib.opj_stream_set_seek_function(self.handle, self._seek_cb)

    def _read(self, buffer: int, nbytes: int, _user: int) -> int:
        n = min(nbytes, len(self._src) - self._pos)
        if n <= 0:
            return _SIZE_MAX  # OpenJPEG's end-of-stream signal
        ctypes.memmove(buffer, self._addr + self._pos, n)
        self._pos += n
        return n

    def _write(self, buffer: int, nbytes: int, _user: int) -> int:
        chunk = ctypes.string_at(buffer, nbytes)
        end = self._pos + nbytes
        if self._pos == len(self.out):
            self.out += chunk
        else:
            if end > len(self.out):
                self.out.extend(bytes(end - len(self.out)))
            self.out[self._pos : end] = chunk
        self._pos = end
        return nbytes

    def _skip(self, nbytes: int, _user: int) -> int:
        limit = len(self._src) if self.is_input else None
        target = self._pos + nbytes
        if limit is not None:
            target = max(0, min(target, limit))
        elif target > len(self.out):
            self.out.extend(bytes(target - len(self.out)))
        skipped = target - self._pos
        self._pos = target
        return skipped

    def _seek(self, offset: int, _user: int) -> int:
        limit = len(self._src) if self.is_input else len(self.out)
        if offset < 0 or (self.is_input and offset > limit):
            return 0
        if not self.is_input and offset > limit:
            self.out.extend(bytes(offset - limit))
        self._pos = offset
        return 1

    def close(self) -> None:
        if self.handle:
            openjp2().stream_destroy(self.handle)
            self.handle = None


class _Errors:
    """Per-codec error collector (glymur's own handler uses a global queue)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.callback = _MSG_FN(self._on_message)

    def _on_message(self, msg: bytes, _user: int) -> None:
        self.messages.append(msg.decode("utf-8", "replace").strip())

    def fail(self, what: str, exc: Exception) -> OpenJPEGError:
        detail = "; ".join(self.messages) or str(exc) or "no detail"
        return OpenJPEGError(f"OpenJPEG {what} failed: {detail}")


def _set_threads(opj: ModuleType, codec: int, threads: int) -> None:
    if threads > 1 and opj.has_thread_support():
        opj.codec_set_threads(codec, threads)


def decode_j2k(
    codestream: bytes, *, layers: int = 0, reduce: int = 0, threads: int = 1
) -> list[tuple[np.ndarray, int, bool]]:
    """Decode a raw J2K codestream held in memory.

    Returns one ``(int32 plane, precision, signed)`` per component.  ``layers``
    0 means all quality layers; ``reduce`` discards that many resolution levels.
    """
    opj = openjp2()
    errors = _Errors()
    stream = _MemoryStream(codestream)
    codec = opj.create_decompress(opj.CODEC_J2K)
    image = None
    try:
        opj.set_error_handler(codec, errors.callback)
        params = opj.set_default_decoder_parameters()
        params.cp_layer = layers
        params.cp_reduce = reduce
        params.decod_format = 0
        opj.setup_decoder(codec, params)
        _set_threads(opj, codec, threads)
        image = opj.read_header(stream.handle, codec)
        opj.decode(codec, stream.handle, image)
        opj.end_decompress(codec, stream.handle)
        return _extract_planes(image)
    except opj.OpenJPEGLibraryError as exc:
        raise errors.fail("decoding", exc) from None
    finally:
        if image is not None:
            opj.image_destroy(image)
        opj.destroy_codec(codec)
        stream.close()


def _extract_planes(image: Any) -> list[tuple[np.ndarray, int, bool]]:  # a ctypes pointer to opj_image_t
    planes = []
    contents = image.contents
    for index in range(contents.numcomps):
        comp = contents.comps[index]
        count = comp.w * comp.h
        if not comp.data or count == 0:
            raise OpenJPEGError(f"component {index} decoded to no data")
        buffer = (ctypes.c_int32 * count).from_address(ctypes.addressof(comp.data.contents))
        plane = np.frombuffer(buffer, dtype=np.int32).reshape(comp.h, comp.w).copy()
        planes.append((plane, int(comp.prec), bool(comp.sgnd)))
    return planes


def encode_j2k(
    planes: list[np.ndarray],
    *,
    precision: int,
    signed: bool,
    color: bool,
    numresolution: int,
    rates: list[float],
    progression: int = 0,
    plt: bool = True,
    tlm: bool = True,
    threads: int = 1,
    precincts: list[tuple[int, int]] | None = None,
    tile_size: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    sop: bool = False,
    eph: bool = False,
    tile_parts: str | None = None,
) -> bytes:
    """Encode int32 planes (one per component) as a raw reversible J2K codestream.

    ``rates`` are OpenJPEG compression ratios per quality layer, 0 meaning
    "everything left" (lossless).  ``progression`` is OpenJPEG's enum
    (0 LRCP, 1 RLCP, 2 RPCL, 3 PCRL, 4 CPRL).  ``precincts`` (width, height)
    from the highest resolution down, ``tile_size`` (width, height), the image
    ``offset`` and SOP/EPH exist so tests can exercise the cutter on the
    geometries other encoders produce; ``tile_parts`` ("R", "L" or "C") splits
    tiles into tile-parts at resolution, layer or component boundaries.
    """
    opj = openjp2()
    image = _new_image(opj, planes, precision=precision, signed=signed, color=color, offset=offset)
    errors = _Errors()
    stream = _MemoryStream()
    codec = opj.create_compress(opj.CODEC_J2K)
    try:
        opj.set_error_handler(codec, errors.callback)
        params = opj.set_default_encoder_parameters()
        params.irreversible = 0
        params.numresolution = numresolution
        params.prog_order = progression
        params.cblockw_init = params.cblockh_init = 64
        params.tcp_numlayers = len(rates)
        params.cp_disto_alloc = 1
        for index, rate in enumerate(rates):
            params.tcp_rates[index] = rate
        params.tcp_mct = 1 if color else 0
        params.cod_format = 0
        params.csty = (2 if sop else 0) | (4 if eph else 0)
        params.image_offset_x0, params.image_offset_y0 = offset
        if precincts:
            params.csty |= 1
            params.res_spec = len(precincts)
            for index, (width, height) in enumerate(precincts):
                params.prcw_init[index], params.prch_init[index] = width, height
        if tile_parts:
            params.tp_on, params.tp_flag = 1, ord(tile_parts)
        if tile_size:
            params.tile_size_on = 1
            params.cp_tdx, params.cp_tdy = tile_size
        opj.setup_encoder(codec, params, image)
        if plt or tlm:
            opj.encoder_set_extra_options(codec, plt=plt, tlm=tlm)
        _set_threads(opj, codec, threads)
        opj.start_compress(codec, image, stream.handle)
        opj.encode(codec, stream.handle)
        opj.end_compress(codec, stream.handle)
    except opj.OpenJPEGLibraryError as exc:
        raise errors.fail("encoding", exc) from None
    finally:
        opj.destroy_codec(codec)
        stream.close()
        opj.image_destroy(image)
    return bytes(stream.out)


def _new_image(
    opj: ModuleType,
    planes: list[np.ndarray],
    *,
    precision: int,
    signed: bool,
    color: bool,
    offset: tuple[int, int],
) -> Any:  # a ctypes pointer to opj_image_t
    rows, cols = planes[0].shape
    x0, y0 = offset
    params = (opj.ImageComptParmType * len(planes))()
    for param in params:
        param.dx = param.dy = 1
        param.w, param.h = cols, rows
        param.x0, param.y0 = x0, y0
        param.prec = param.bpp = precision
        param.sgnd = 1 if signed else 0
    space = opj.CLRSPC_SRGB if color else opj.CLRSPC_GRAY
    image = opj.image_create(params, space)
    if not image:
        raise OpenJPEGError("opj_image_create failed")
    contents = image.contents
    contents.x0, contents.y0, contents.x1, contents.y1 = x0, y0, x0 + cols, y0 + rows
    for index, plane in enumerate(planes):
        data = np.ascontiguousarray(plane, dtype=np.int32)
        ctypes.memmove(contents.comps[index].data, data.ctypes.data, data.nbytes)
    return image
