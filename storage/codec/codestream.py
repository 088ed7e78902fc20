"""Parse the structure of a raw JPEG 2000 codestream (ISO 15444-1 Annex A).

Only headers are read: the main header (SIZ, COD, COC, QCD, QCC, TLM, CAP, ...)
and each tile-part's header (SOT, PLT, tile COD/COC/QCD/QCC).  Packet headers
and entropy-coded data are never touched, which keeps parsing a 2k frame well
under a millisecond.  The cutter builds on the offsets recorded here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Marker codes (Table A.2, and A.3 of 15444-15 for CAP/CPF).
SOC, SOT, SOD, EOC = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9
SIZ, COD, COC, QCD, QCC, RGN, POC = 0xFF51, 0xFF52, 0xFF53, 0xFF5C, 0xFF5D, 0xFF5E, 0xFF5F
TLM, PLM, PLT, PPM, PPT, CRG, COM = 0xFF55, 0xFF57, 0xFF58, 0xFF60, 0xFF61, 0xFF63, 0xFF64
CAP, CPF = 0xFF50, 0xFF59

PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
_HT_BLOCK_STYLE = 0x40  # SPcod code-block style bit: HT code-blocks (15444-15)


class CodestreamError(ValueError):
    """The bytes are not a codestream this parser understands."""


@dataclass(frozen=True)
class Component:
    precision: int
    signed: bool
    dx: int
    dy: int


@dataclass(frozen=True)
class Siz:
    rsiz: int
    xsiz: int
    ysiz: int
    x0: int
    y0: int
    tile_width: int
    tile_height: int
    tile_x0: int
    tile_y0: int
    components: tuple[Component, ...]

    @property
    def width(self) -> int:
        return self.xsiz - self.x0

    @property
    def height(self) -> int:
        return self.ysiz - self.y0

    @property
    def tiles_x(self) -> int:
        return -(-(self.xsiz - self.tile_x0) // self.tile_width)

    @property
    def tiles_y(self) -> int:
        return -(-(self.ysiz - self.tile_y0) // self.tile_height)

    def tile_rect(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of tile ``index`` on the reference grid (B.3)."""
        p, q = index % self.tiles_x, index // self.tiles_x
        x0 = max(self.tile_x0 + p * self.tile_width, self.x0)
        y0 = max(self.tile_y0 + q * self.tile_height, self.y0)
        x1 = min(self.tile_x0 + (p + 1) * self.tile_width, self.xsiz)
        y1 = min(self.tile_y0 + (q + 1) * self.tile_height, self.ysiz)
        return x0, y0, x1, y1


@dataclass(frozen=True)
class CodingStyle:
    """COD (component=None) or COC content; layer fields are COD-only."""

    scod: int
    levels: int
    cb_width_exp: int
    cb_height_exp: int
    cb_style: int
    transform: int
    precincts: tuple[tuple[int, int], ...] | None  # (PPx, PPy) per resolution
    progression: int = 0
    layers: int = 1
    mct: int = 0

    def precinct_exps(self, resolution: int) -> tuple[int, int]:
        if self.precincts is None:
            return 15, 15
        return self.precincts[resolution]

    @property
    def sop(self) -> bool:
        return bool(self.scod & 2)

    @property
    def eph(self) -> bool:
        return bool(self.scod & 4)


@dataclass(frozen=True)
class Segment:
    """A marker segment: ``start`` at the marker, ``end`` after its body."""

    marker: int
    start: int
    end: int


@dataclass
class TilePart:
    start: int  # offset of SOT
    tile: int
    part: int
    parts: int  # TNsot, 0 if unknown
    body_start: int  # first byte after SOD
    end: int  # first byte after this tile-part
    segments: list[Segment] = field(default_factory=list)
    plt: list[int] | None = None  # packet lengths from this tile-part's PLT


@dataclass
class Codestream:
    data: bytes | memoryview
    siz: Siz
    cod: CodingStyle
    main: list[Segment]
    coc: dict[int, CodingStyle]
    tile_parts: list[TilePart]
    main_end: int  # offset of the first SOT

    def has(self, marker: int) -> bool:
        return any(seg.marker == marker for seg in self.main)

    @property
    def htj2k(self) -> bool:
        return self.has(CAP) or bool(self.cod.cb_style & _HT_BLOCK_STYLE)

    def style(self, component: int) -> CodingStyle:
        return self.coc.get(component, self.cod)


@dataclass(frozen=True)
class CodestreamInfo:
    width: int
    height: int
    components: int
    precision: int
    signed: bool
    layers: int
    levels: int
    progression: str
    htj2k: bool
    plt: bool
    tlm: bool
    tiles: int
    tile_parts: int
    reversible: bool
    mct: bool


# ---------------------------------------------------------------- parsing


def parse(data: bytes | memoryview) -> Codestream:
    """Parse main header and tile-part headers of a raw J2K codestream."""
    view = memoryview(data)
    if len(view) < 4 or view[0:2] != b"\xff\x4f":
        raise CodestreamError("not a raw JPEG 2000 codestream (no SOC marker)")
    main, pos = _main_header(view)
    siz = cod = None
    coc: dict[int, CodingStyle] = {}
    for seg in main:
        if seg.marker == SIZ:
            siz = parse_siz(view[seg.start + 4 : seg.end])
        elif seg.marker == COD:
            cod = parse_cod(view[seg.start + 4 : seg.end])
    if siz is None or cod is None:
        raise CodestreamError("main header lacks SIZ or COD")
    for seg in main:
        if seg.marker == COC:
            comp, style = parse_coc(view[seg.start + 4 : seg.end], len(siz.components))
            coc[comp] = style
    tile_parts = _tile_parts(view, pos)
    return Codestream(view, siz, cod, main, coc, tile_parts, pos)


def _main_header(view: memoryview) -> tuple[list[Segment], int]:
    segments: list[Segment] = []
    pos = 2
    size = len(view)
    while pos + 4 <= size:
        marker, length = struct.unpack_from(">HH", view, pos)
        if marker == SOT:
            return segments, pos
        if marker >> 8 != 0xFF or length < 2:
            raise CodestreamError(f"bad marker 0x{marker:04X} at offset {pos}")
        segments.append(Segment(marker, pos, pos + 2 + length))
        pos += 2 + length
    raise CodestreamError("codestream has no tile-part (SOT)")


def _tile_parts(view: memoryview, pos: int) -> list[TilePart]:
    parts = []
    size = len(view)
    eoc = size - 2 if view[size - 2 : size] == b"\xff\xd9" else size
    while pos + 12 <= size:
        marker = struct.unpack_from(">H", view, pos)[0]
        if marker == EOC:
            break
        if marker != SOT:
            raise CodestreamError(f"expected SOT at offset {pos}, found 0x{marker:04X}")
        _, tile, psot, part, nparts = struct.unpack_from(">HHIBB", view, pos + 2)
        end = eoc if psot == 0 else pos + psot
        if end > size or end < pos + 14:
            raise CodestreamError(f"tile-part at {pos} has an impossible Psot {psot}")
        tp = TilePart(pos, tile, part, nparts, 0, end)
        hpos = pos + 12
        while True:
            if hpos + 2 > end:
                raise CodestreamError(f"tile-part at {pos} has no SOD")
            hmarker = struct.unpack_from(">H", view, hpos)[0]
            if hmarker == SOD:
                tp.body_start = hpos + 2
                break
            length = struct.unpack_from(">H", view, hpos + 2)[0]
            tp.segments.append(Segment(hmarker, hpos, hpos + 2 + length))
            hpos += 2 + length
        plts = [s for s in tp.segments if s.marker == PLT]
        if plts:
            tp.plt = _plt_lengths(view, plts)
        parts.append(tp)
        pos = end
    return parts


def _plt_lengths(view: memoryview, segments: list[Segment]) -> list[int]:
    """Decode Iplt values (7 bits per byte, high bit = "more follows", A.7.3)."""
    lengths = []
    value = 0
    # Segments are ordered by Zplt; an encoder writes them in that order anyway.
    for seg in sorted(segments, key=lambda s: view[s.start + 4]):
        for byte in view[seg.start + 5 : seg.end]:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                lengths.append(value)
                value = 0
    return lengths


def parse_siz(body: memoryview | bytes) -> Siz:
    rsiz, xsiz, ysiz, x0, y0, xt, yt, xt0, yt0, csiz = struct.unpack_from(">HIIIIIIIIH", body, 0)
    comps = []
    for index in range(csiz):
        ssiz, dx, dy = struct.unpack_from(">BBB", body, 36 + 3 * index)
        comps.append(Component((ssiz & 0x7F) + 1, bool(ssiz & 0x80), dx, dy))
    return Siz(rsiz, xsiz, ysiz, x0, y0, xt, yt, xt0, yt0, tuple(comps))


def parse_cod(body: memoryview | bytes) -> CodingStyle:
    scod, prog, layers, mct = struct.unpack_from(">BBHB", body, 0)
    levels, xcb, ycb, cbs, transform = struct.unpack_from(">BBBBB", body, 5)
    precincts = _precincts(body, 10, levels) if scod & 1 else None
    return CodingStyle(scod, levels, xcb + 2, ycb + 2, cbs, transform, precincts, prog, layers, mct)


def parse_coc(body: memoryview | bytes, csiz: int) -> tuple[int, CodingStyle]:
    width = 1 if csiz < 257 else 2
    comp = body[0] if width == 1 else struct.unpack_from(">H", body, 0)[0]
    scoc = body[width]
    levels, xcb, ycb, cbs, transform = struct.unpack_from(">BBBBB", body, width + 1)
    precincts = _precincts(body, width + 6, levels) if scoc & 1 else None
    return comp, CodingStyle(scoc, levels, xcb + 2, ycb + 2, cbs, transform, precincts)


def _precincts(body: memoryview | bytes, offset: int, levels: int) -> tuple[tuple[int, int], ...]:
    return tuple((b & 0x0F, b >> 4) for b in bytes(body[offset : offset + levels + 1]))


# ---------------------------------------------------------------- summary


def info(codestream: bytes | memoryview | Codestream) -> CodestreamInfo:
    """Summary of a codestream's main header (first component for sizes)."""
    cs = codestream if isinstance(codestream, Codestream) else parse(codestream)
    first = cs.siz.components[0]
    return CodestreamInfo(
        width=cs.siz.width,
        height=cs.siz.height,
        components=len(cs.siz.components),
        precision=first.precision,
        signed=first.signed,
        layers=cs.cod.layers,
        levels=cs.cod.levels,
        progression=PROGRESSIONS[cs.cod.progression] if cs.cod.progression < 5 else "?",
        htj2k=cs.htj2k,
        plt=bool(cs.tile_parts) and all(tp.plt is not None for tp in cs.tile_parts),
        tlm=cs.has(TLM),
        tiles=cs.siz.tiles_x * cs.siz.tiles_y,
        tile_parts=len(cs.tile_parts),
        reversible=cs.cod.transform == 1,
        mct=bool(cs.cod.mct),
    )


# The marker that ends a JPEG 2000 codestream (EOC) and a JPEG or JPEG-LS one (EOI).
END_MARKER = b"\xff\xd9"
# Trailing zero bytes looked at: a fragment is padded by one byte; a few writers pad further.
_MAX_PADDING = 8


def without_padding(stream: bytes) -> bytes:
    """A frame's codestream as it ends, at its end marker, without the zero byte that made its DICOM
    fragment even (PS3.5 A.4): what a decoder or validator reading the codestream alone expects (ISO
    15444-1 A.4.4: EOC is the last two bytes). Anything else comes back unchanged."""
    end = len(stream)
    while end > 2 and len(stream) - end < _MAX_PADDING and stream[end - 1] == 0:
        end -= 1
    if end == len(stream) or stream[end - 2 : end] != END_MARKER:
        return stream
    return stream[:end]


def levels_to_drop(width: int, height: int, levels: int, min_width: int, min_height: int) -> int:
    """The most resolution levels (at most `levels`) that can be dropped while an image of width x
    height stays at least min_width x min_height (level D of a side n has ceil(n / 2^D) samples,
    ISO 15444-1 B.5)."""
    drop = 0
    while drop < levels and -(-width >> (drop + 1)) >= min_width and -(-height >> (drop + 1)) >= min_height:
        drop += 1
    return drop
