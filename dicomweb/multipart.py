"""Streaming multipart/related (RFC 2046) reader for STOW-RS and writer for WADO-RS.

The reader spools every part body to its own temporary file while the request
body is still arriving, so memory use depends on the chunk size and the write
batch size, never on the size of a part.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from dicomweb.header_params import is_token, split_unquoted, unquote

__all__ = [
    "MAX_HEADER_BYTES",
    "MultipartError",
    "Part",
    "boundary_from_content_type",
    "cleanup",
    "closing",
    "encode_multipart",
    "make_boundary",
    "multipart_content_type",
    "multipart_length",
    "part_header",
    "read_multipart",
]

MAX_HEADER_BYTES = 16 * 1024
# Real clients send no preamble; the cap makes a body posted with the wrong
# boundary fail after 1 MiB instead of after the whole (possibly huge) upload.
MAX_PREAMBLE_BYTES = 1024 * 1024
# Bounds the look-ahead needed to decide whether "--boundary" is a delimiter.
MAX_TRANSPORT_PADDING = 1024
# Body bytes are held back until this many are known to precede any delimiter,
# so the temp file gets few large writes rather than one per network chunk.
WRITE_BATCH = 1024 * 1024

_CR, _LF, _DASH = 0x0D, 0x0A, 0x2D
_PADDING = (0x20, 0x09)
_BOUNDARY_MAX_LEN = 70  # RFC 2046 section 5.1.1


@dataclass
class Part:
    headers: dict[str, str]  # lower-cased names
    content_type: str | None  # raw Content-Type value
    path: str  # temporary file holding the body
    size: int


class MultipartError(ValueError):
    """The request body or its Content-Type is not valid multipart (HTTP 400)."""


# --------------------------------------------------------------------------- Content-Type


def boundary_from_content_type(content_type: str) -> str:
    """Return the boundary parameter of a ``multipart/*`` Content-Type value."""
    if not content_type or not content_type.strip():
        raise MultipartError("missing Content-Type")
    media_type, *params = split_unquoted(content_type, ";")
    if not media_type.strip().lower().startswith("multipart/"):
        raise MultipartError(f"expected a multipart content type, got {media_type.strip()!r}")
    for param in params:
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "boundary":
            return _validate_boundary(unquote(value.strip()))
    raise MultipartError("missing boundary parameter")


def _validate_boundary(boundary: str) -> str:
    if not 1 <= len(boundary) <= _BOUNDARY_MAX_LEN:
        raise MultipartError(f"boundary must be 1 to {_BOUNDARY_MAX_LEN} characters, got {len(boundary)}")
    if boundary.endswith(" "):
        raise MultipartError("boundary must not end with a space")
    # Liberal about RFC 2046 bchars (clients use '%', '@', ...), but control
    # and non-ASCII characters cannot round-trip through the body reliably.
    if not all(" " <= ch <= "~" for ch in boundary):
        raise MultipartError("boundary contains control or non-ASCII characters")
    return boundary


# --------------------------------------------------------------------------- reader


class _Delim(enum.Enum):
    NEED_MORE = enum.auto()
    NOT_DELIMITER = enum.auto()
    NEXT_PART = enum.auto()
    CLOSE = enum.auto()


def _classify_delimiter(buf: bytearray, pos: int, eof: bool) -> tuple[_Delim, int]:
    """Decide what the bytes after a boundary match ending at ``pos`` make of it.

    RFC 2046 only recognises ``--boundary`` followed by ``--`` (close) or by
    transport padding and a line break; ``--boundaryX`` is ordinary data.
    Returns the kind and the index just past the delimiter line.
    """
    n = len(buf)
    undecided = _Delim.NOT_DELIMITER if eof else _Delim.NEED_MORE
    if pos < n and buf[pos] == _DASH:
        if pos + 1 == n:
            return undecided, pos
        return (_Delim.CLOSE, pos + 2) if buf[pos + 1] == _DASH else (_Delim.NOT_DELIMITER, pos)
    end = pos
    while end < n and buf[end] in _PADDING:
        end += 1
    if end - pos > MAX_TRANSPORT_PADDING:
        raise MultipartError("transport padding after boundary is too long")
    if end == n:
        return undecided, pos
    if buf[end] == _LF:  # bare LF: liberal, the boundary itself is unambiguous
        return _Delim.NEXT_PART, end + 1
    if buf[end] == _CR:
        if end + 1 == n:
            return undecided, pos
        if buf[end + 1] == _LF:
            return _Delim.NEXT_PART, end + 2
    return _Delim.NOT_DELIMITER, pos


class _Source:
    """Accumulates chunks of the request body in one buffer."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks: AsyncIterator[bytes] = chunks.__aiter__()
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> bool:
        """Append the next non-empty chunk; False once the body is exhausted."""
        while not self.eof:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self.eof = True
                break
            if chunk:
                self.buf += chunk
                return True
        return False

    async def drain(self) -> None:
        # The epilogue is ignored, but consuming it keeps the connection usable.
        self.buf.clear()
        while not self.eof:
            try:
                await self._chunks.__anext__()
            except StopAsyncIteration:
                self.eof = True


class _Parser:
    def __init__(
        self,
        source: _Source,
        boundary: bytes,
        tmpdir: str,
        max_part_size: int | None,
        max_parts: int,
        on_part: Callable[[Part], None] | None = None,
    ) -> None:
        self.src = source
        self.dash_boundary = b"--" + boundary
        self.delimiter = b"\r\n" + self.dash_boundary
        self.tmpdir = tmpdir
        self.max_part_size = max_part_size
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.on_part = on_part
        self.created: list[str] = []  # every temp file, including a half-written one

    async def run(self) -> list[Part]:
        kind = await self._skip_preamble()
        while kind is _Delim.NEXT_PART:
            if len(self.parts) >= self.max_parts:
                raise MultipartError(f"more than {self.max_parts} parts")
            kind = await self._read_part()
        if not self.parts:
            raise MultipartError("multipart body contains no parts")
        await self.src.drain()
        return self.parts

    async def _skip_preamble(self) -> _Delim:
        """Discard everything up to and including the first delimiter line."""
        src, dash = self.src, self.dash_boundary
        buf = src.buf
        search = discarded = 0
        while True:
            i = buf.find(dash, search)
            if i >= 0 and discarded + i > MAX_PREAMBLE_BYTES:
                raise MultipartError(f"no opening boundary found in the first {MAX_PREAMBLE_BYTES} bytes")
            if i >= 0:
                # The first delimiter may lack the leading CRLF but must start a line.
                at_line_start = buf[i - 1] == _LF if i > 0 else discarded == 0
                if not at_line_start:
                    search = i + 1
                    continue
                kind, end = _classify_delimiter(buf, i + len(dash), src.eof)
                if kind is _Delim.NEED_MORE:
                    await src.fill()
                    continue
                if kind is _Delim.NOT_DELIMITER:
                    search = i + 1
                    continue
                del buf[:end]
                return kind
            # Keep one byte more than a partial match so the line-start check still works.
            excess = len(buf) - len(dash) - 1
            if excess > 0:
                del buf[:excess]
                discarded += excess
                search = 0
            if discarded > MAX_PREAMBLE_BYTES:
                raise MultipartError(f"no opening boundary found in the first {MAX_PREAMBLE_BYTES} bytes")
            if not await src.fill():
                raise MultipartError("no opening boundary found")

    async def _read_part(self) -> _Delim:
        path, out = self._create_temp_file()
        with out:
            immediate = await self._immediate_delimiter()
            if immediate is not None:
                # "--b\r\n\r\n--b": a part with neither headers nor body.
                headers: dict[str, str] = {}
                size = 0
                kind = immediate
            else:
                headers = await self._read_headers()
                size, kind = await self._read_body(out)
        part = Part(headers, headers.get("content-type"), path, size)
        self.parts.append(part)
        if self.on_part is not None:
            self.on_part(part)
        return kind

    async def _immediate_delimiter(self) -> _Delim | None:
        src, delim = self.src, self.delimiter
        buf = src.buf
        while True:
            have = min(len(buf), len(delim))
            if buf[:have] != delim[:have]:
                return None
            if have == len(delim):
                kind, end = _classify_delimiter(buf, have, src.eof)
                if kind is _Delim.NEED_MORE:
                    await src.fill()
                    continue
                if kind is _Delim.NOT_DELIMITER:
                    return None
                del buf[:end]
                return kind
            if not await src.fill():
                return None

    async def _read_headers(self) -> dict[str, str]:
        src = self.src
        buf = src.buf
        pos = 0  # start of the current, not yet complete, header line
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError(f"part header block larger than {MAX_HEADER_BYTES} bytes")
                if not await src.fill():
                    raise MultipartError("multipart body ends inside part headers (truncated)")
                continue
            if nl == pos or (nl == pos + 1 and buf[pos] == _CR):
                block = bytes(buf[:pos])
                del buf[: nl + 1]
                return _parse_header_block(block)
            pos = nl + 1
            if pos > MAX_HEADER_BYTES:
                raise MultipartError(f"part header block larger than {MAX_HEADER_BYTES} bytes")

    async def _read_body(self, out: BinaryIO) -> tuple[int, _Delim]:
        """Copy body bytes to ``out`` up to the next delimiter; strict CRLF--boundary."""
        src, delim = self.src, self.delimiter
        buf = src.buf
        written = search = 0
        while True:
            i = buf.find(delim, search)
            if i >= 0:
                kind, end = _classify_delimiter(buf, i + len(delim), src.eof)
                if kind is _Delim.NEED_MORE:
                    await src.fill()
                    continue
                if kind is _Delim.NOT_DELIMITER:
                    search = i + 1
                    continue
                self._check_size(written + i)
                self._write(out, i)
                del buf[: end - i]
                return written + i, kind
            # No delimiter can start before `safe`: those bytes are body for sure.
            safe = len(buf) - len(delim) + 1
            search = max(search, safe, 0)
            if safe > 0:
                self._check_size(written + safe)
                if safe >= WRITE_BATCH:
                    self._write(out, safe)
                    written += safe
                    search -= safe
            if not await src.fill():
                raise MultipartError("multipart body ends before the closing boundary (truncated)")

    def _create_temp_file(self) -> tuple[str, BinaryIO]:
        # Synchronous on purpose, like _write: creating a local file is cheap. The folder is this
        # request's own, so a counter names the files (O_EXCL still refuses to reuse one).
        path = os.path.join(self.tmpdir, f"part-{len(self.created) + 1}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.created.append(path)
        return path, open(fd, "wb")

    def _check_size(self, size: int) -> None:
        if self.max_part_size is not None and size > self.max_part_size:
            raise MultipartError(
                f"part {len(self.parts) + 1} exceeds the maximum part size of {self.max_part_size} bytes"
            )

    def _write(self, out: BinaryIO, n: int) -> None:
        # Blocking write of a large batch: cheaper than a thread hop per chunk,
        # and page-cache writes of ~1 MiB do not stall the event loop noticeably.
        if n:
            with memoryview(self.src.buf)[:n] as view:
                out.write(view)
            del self.src.buf[:n]


def _parse_header_block(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in block.split(b"\n"):
        line = _decode_header(raw[:-1] if raw.endswith(b"\r") else raw)
        if not line:
            continue
        if line[0] in " \t":  # obsolete line folding: continues the previous value
            if last is None:
                raise MultipartError(f"malformed part header line: {line[:80]!r}")
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or not is_token(name):
            raise MultipartError(f"malformed part header line: {line[:80]!r}")
        value = value.strip()
        # Repeated headers combine as in HTTP (RFC 9110 section 5.3).
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return headers


def _decode_header(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _boundary_bytes(boundary: str) -> bytes:
    if not boundary:
        raise MultipartError("empty boundary")
    # Starlette decodes header values as latin-1, so this recovers the wire bytes.
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        return boundary.encode("utf-8")


async def read_multipart(
    chunks: AsyncIterator[bytes] | AsyncIterable[bytes],
    boundary: str,
    tmpdir: str,
    *,
    max_part_size: int | None = None,
    max_parts: int = 10000,
    on_part: Callable[[Part], None] | None = None,
) -> list[Part]:
    """Parse a multipart body, spooling each part to a temp file in ``tmpdir`` (a folder of its own).

    ``on_part`` is called with each part as soon as its body is complete, while later parts are still
    arriving (STOW-RS starts parsing them meanwhile).

    The caller owns the returned files (see :func:`cleanup`). On any error,
    including cancellation, every file created so far is removed first.
    """
    parser = _Parser(_Source(chunks), _boundary_bytes(boundary), tmpdir, max_part_size, max_parts, on_part)
    try:
        return await parser.run()
    except BaseException:
        _unlink_all(parser.created)
        raise


def cleanup(parts: Iterable[Part]) -> None:
    """Delete the temp files of ``parts``; missing files are ignored."""
    _unlink_all(part.path for part in parts)


def _unlink_all(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --------------------------------------------------------------------------- writer


def make_boundary(seed: bytes | str) -> str:
    """Boundary derived from ``seed`` so identical requests yield identical bytes."""
    data = seed.encode("utf-8") if isinstance(seed, str) else seed
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def part_header(
    boundary: str, content_type: str, extra: Mapping[str, str] | None = None, first: bool = True
) -> bytes:
    """Delimiter line and headers of one part, up to and including the blank line.

    The default layout expects the caller to write ``\\r\\n`` after each body
    (as :func:`encode_multipart` does). ``first=False`` instead prefixes the
    CRLF that ends the previous body, for writers that emit bare bodies; they
    must then also write ``\\r\\n`` before :func:`closing`. Both give the same bytes.
    """
    lines = [f"--{boundary}", f"Content-Type: {_header_value(content_type)}"]
    lines += [f"{name}: {_header_value(value)}" for name, value in (extra or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return head if first else b"\r\n" + head


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_content_type(boundary: str, type_: str, transfer_syntax: str | None = None) -> str:
    """Response Content-Type, e.g. ``multipart/related; type="application/dicom"; boundary=...``."""
    value = f'multipart/related; type="{type_}"'
    if transfer_syntax:
        value += f"; transfer-syntax={_param_value(transfer_syntax)}"
    return f"{value}; boundary={_param_value(boundary)}"


# (content_type, body) or (content_type, body, extra headers)
EncodablePart = tuple[str, bytes] | tuple[str, bytes, Mapping[str, str] | None]
# (content_type, size) or (content_type, size, extra headers)
SizedPart = tuple[str, int] | tuple[str, int, Mapping[str, str] | None]


def encode_multipart(boundary: str, parts: Iterable[EncodablePart]) -> bytes:
    """Whole multipart body in memory; for small responses."""
    out: list[bytes] = []
    for part in parts:
        content_type, body = part[0], part[1]
        extra = part[2] if len(part) > 2 else None
        out += (part_header(boundary, content_type, extra), body, b"\r\n")
    out.append(closing(boundary))
    return b"".join(out)


def multipart_length(boundary: str, parts: Iterable[SizedPart]) -> int:
    """Exact length of :func:`encode_multipart` output, without the bodies."""
    total = len(closing(boundary))
    for part in parts:
        content_type, size = part[0], part[1]
        extra = part[2] if len(part) > 2 else None
        total += len(part_header(boundary, content_type, extra)) + size + 2
    return total


def _header_value(value: str) -> str:
    # A CR or LF would let a value inject headers or end the header block early.
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value contains a line break: {value!r}")
    return value


def _param_value(value: str) -> str:
    if is_token(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
