"""Cut quality layers and resolution levels out of a J2K codestream, no re-encode.

``cut(cs, layers=L, drop_levels=D)`` returns a standalone codestream holding
the first L quality layers and all but the top D resolution levels:

* SIZ sizes and offsets become ceil(x / 2^D); COD/COC get NL-D levels, L
  layers and the first NL-D+1 precinct sizes; QCD/QCC lose the last 3D bands.
* Packets are found from PLT lengths: packet identities (layer, resolution,
  component, precinct) are enumerated in the codestream's progression order
  from SIZ/COD geometry, exactly as the decoder will enumerate them; the kept
  ones are emitted in the order the *cut* codestream's decoder expects.
* PLT, TLM and every Psot/TNsot are regenerated (OpenJPEG 2.5 rejects stale
  ones, or worse, decodes garbage).

HTJ2K codestreams have one layer; without PLT they can still lose resolution
levels when each tile-part holds exactly one resolution (OpenJPH's "R" tile-part
division, required anyway by the DICOM RPCL HTJ2K transfer syntax).

Why the enumeration is exact: for every kept resolution r, the resolution's
coordinates in the cut codestream, ceil(ceil(t/2^D)/2^(NL-D-r)), equal the
original ceil(t/2^(NL-r)), so precinct grids and indices are unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from itertools import pairwise
from typing import NamedTuple

from .codestream import (
    COC,
    COD,
    PLM,
    PLT,
    POC,
    PPM,
    PPT,
    QCC,
    QCD,
    SIZ,
    TLM,
    Codestream,
    CodestreamError,
    CodingStyle,
    Segment,
    Siz,
    TilePart,
    parse,
)

_SOC = b"\xff\x4f"
_SOD = b"\xff\x93"
_EOC = b"\xff\xd9"
_LRCP, _RLCP, _RPCL, _PCRL, _CPRL = range(5)
_MAX_SEGMENT = 65535


class CutError(ValueError):
    """The codestream cannot be cut as asked (and nothing is guessed)."""


def cut(codestream: bytes, *, layers: int | None, drop_levels: int = 0) -> bytes:
    """Keep the first ``layers`` quality layers and drop ``drop_levels`` levels."""
    try:
        cs = parse(codestream)
    except CodestreamError as exc:
        raise CutError(str(exc)) from exc
    total = cs.cod.layers
    if layers is not None and layers < 1:
        raise CutError(f"layers must be >= 1, got {layers}")
    if drop_levels < 0:
        raise CutError(f"drop_levels must be >= 0, got {drop_levels}")
    keep = total if layers is None else min(layers, total)
    if keep == total and drop_levels == 0:
        return codestream
    _check_cuttable(cs, drop_levels)
    return _Cutter(cs, keep, drop_levels).build()


def _check_cuttable(cs: Codestream, drop: int) -> None:
    for seg in cs.main:
        if seg.marker in (POC, PPM):
            raise CutError(f"{'POC' if seg.marker == POC else 'PPM'} marker in main header is not supported")
    for tp in cs.tile_parts:
        for seg in tp.segments:
            if seg.marker in (POC, PPT):
                raise CutError(
                    f"{'POC' if seg.marker == POC else 'PPT'} marker in tile {tp.tile} is not supported"
                )
            if seg.marker in (COD, COC):
                # They would change layers/levels/precincts per tile; no encoder we use writes them.
                raise CutError(f"tile-level COD/COC in tile {tp.tile} is not supported")
    levels = min(cs.style(c).levels for c in range(len(cs.siz.components)))
    if drop > levels:
        raise CutError(f"cannot drop {drop} levels: the codestream has only {levels}")
    for comp in cs.siz.components:
        if comp.dx & (comp.dx - 1) or comp.dy & (comp.dy - 1):
            raise CutError("component subsampling that is not a power of two is not supported")
    siz = cs.siz
    multi = siz.tiles_x > 1 or siz.tiles_y > 1
    step = 1 << drop
    if multi and (siz.tile_width % step or siz.tile_height % step):
        raise CutError(
            f"tile size {siz.tile_width}x{siz.tile_height} is not divisible by 2^{drop}; "
            "dropping levels would move tile boundaries"
        )
    reduced = reduce_siz(siz, drop)
    if (reduced.tiles_x, reduced.tiles_y) != (siz.tiles_x, siz.tiles_y):
        raise CutError(f"dropping {drop} levels would change the number of tiles")


def reduce_siz(siz: Siz, drop: int) -> Siz:
    """SIZ of the image with ``drop`` resolution levels removed."""
    if drop == 0:
        return siz

    def up(value: int) -> int:
        return -(-value >> drop) if value else 0

    def tile(size: int, count: int) -> int:
        # Single tile: any covering size will do; several: exact division.
        return up(size) if count == 1 else size >> drop

    return Siz(
        siz.rsiz,
        up(siz.xsiz),
        up(siz.ysiz),
        up(siz.x0),
        up(siz.y0),
        tile(siz.tile_width, siz.tiles_x),
        tile(siz.tile_height, siz.tiles_y),
        up(siz.tile_x0),
        up(siz.tile_y0),
        siz.components,
    )


# ------------------------------------------------------------ packet order


def packet_order(
    progression: int,
    layers: int,
    styles: list[CodingStyle],
    drop: int,
    rect: tuple[int, int, int, int],
    subsampling: list[tuple[int, int]],
) -> list[tuple[int, int, int, int]]:
    """Packet identities (layer, resolution, component, precinct) in stream order.

    ``rect`` is the tile on the reference grid of a codestream whose components
    have ``styles[c].levels - drop`` decomposition levels (B.12 / OpenJPEG pi.c).
    """
    grids = _precinct_grids(styles, drop, rect, subsampling)
    if progression == _LRCP:
        return [
            (lay, res, comp, p)
            for lay in range(layers)
            for res, comp, count in _res_comp(grids)
            for p in range(count)
        ]
    if progression == _RLCP:
        order: list[tuple[int, int, int, int]] = []
        for res in range(max(len(g) for g in grids)):
            for lay in range(layers):
                for comp, comp_grids in enumerate(grids):
                    if res < len(comp_grids):
                        order.extend((lay, res, comp, p) for p in range(comp_grids[res][0]))
        return order
    visits = _position_visits(grids, rect, subsampling)
    if progression == _RPCL:
        visits.sort(key=lambda v: (v[2], v[0], v[1], v[3]))
    elif progression == _PCRL:
        visits.sort(key=lambda v: (v[0], v[1], v[3], v[2]))
    elif progression == _CPRL:
        visits.sort(key=lambda v: (v[3], v[0], v[1], v[2]))
    else:
        raise CutError(f"unknown progression order {progression}")
    return [(lay, res, comp, p) for _, _, res, comp, p in visits for lay in range(layers)]


def _res_comp(grids: list[list[tuple]]) -> Iterator[tuple[int, int, int]]:
    for res in range(max(len(g) for g in grids)):
        for comp, comp_grids in enumerate(grids):
            if res < len(comp_grids):
                yield res, comp, comp_grids[res][0]


def _precinct_grids(
    styles: list[CodingStyle],
    drop: int,
    rect: tuple[int, int, int, int],
    subsampling: list[tuple[int, int]],
) -> list[list[tuple[int, int, int, int, int, int, int, int]]]:
    """Per component, per resolution: (count, pw, trx0, try0, ppx, ppy, levelno, -)."""
    tx0, ty0, tx1, ty1 = rect
    grids = []
    for style, (dx, dy) in zip(styles, subsampling, strict=True):
        levels = style.levels - drop
        comp_grids = []
        for res in range(levels + 1):
            levelno = levels - res
            ppx, ppy = style.precinct_exps(res)
            trx0 = -(-tx0 // (dx << levelno))
            try0 = -(-ty0 // (dy << levelno))
            trx1 = -(-tx1 // (dx << levelno))
            try1 = -(-ty1 // (dy << levelno))
            if trx1 > trx0 and try1 > try0:
                pw = (-(-trx1 >> ppx)) - (trx0 >> ppx)
                ph = (-(-try1 >> ppy)) - (try0 >> ppy)
            else:
                pw = ph = 0
            comp_grids.append((pw * ph, pw, trx0, try0, ppx, ppy, levelno, ph))
        grids.append(comp_grids)
    return grids


def _position_visits(
    grids: list[list[tuple[int, int, int, int, int, int, int, int]]],
    rect: tuple[int, int, int, int],
    subsampling: list[tuple[int, int]],
) -> list[tuple[int, int, int, int, int]]:
    """(y, x, res, comp, precinct) where a position-driven loop first meets each precinct.

    Mirrors OpenJPEG's opj_pi_next_rpcl/pcrl/cprl: a precinct is visited at the
    reference-grid position of its top-left corner, except a first row/column
    that is not aligned to the precinct grid, which is visited at the tile edge.
    """
    tx0, ty0, _, _ = rect
    visits = []
    for comp, (comp_grids, (dx, dy)) in enumerate(zip(grids, subsampling, strict=True)):
        for res, (count, pw, trx0, try0, ppx, ppy, levelno, ph) in enumerate(comp_grids):
            if not count:
                continue
            xs = _visit_coords(pw, trx0, ppx, levelno, dx, tx0)
            ys = _visit_coords(ph, try0, ppy, levelno, dy, ty0)
            for j, y in enumerate(ys):
                for i, x in enumerate(xs):
                    visits.append((y, x, res, comp, i + j * pw))
    return visits


def _visit_coords(n: int, start: int, pp: int, levelno: int, d: int, tile_start: int) -> list[int]:
    first = start >> pp
    coords = [((first + i) << pp << levelno) * d for i in range(n)]
    if (start << levelno) % (1 << (pp + levelno)):
        coords[0] = tile_start
    return coords


# ------------------------------------------------------------ the cutter


class _Piece(NamedTuple):
    """One output tile-part: its tile, its index in the tile, packets, bytes."""

    tile: int
    number: int  # its index among the tile's parts (TPsot)
    packet_lengths: list[int]  # for the regenerated PLT; empty when not known
    chunks: list[bytes | memoryview]


class _Cutter:
    def __init__(self, cs: Codestream, layers: int, drop: int) -> None:
        self.cs = cs
        self.view = memoryview(cs.data)
        self.layers = layers
        self.drop = drop
        self.siz = reduce_siz(cs.siz, drop)

    def build(self) -> bytes:
        tiles = self._tiles()
        first_parts = {parts[0].tile: parts[0] for parts in tiles}
        pieces = [piece for parts in tiles for piece in self._cut_tile(parts)]
        counts: dict[int, int] = {}
        for piece in pieces:
            counts[piece.tile] = counts.get(piece.tile, 0) + 1
        # Tile-parts first: the main header's TLM needs their lengths.
        chunks: list[bytes | memoryview] = []
        lengths: list[tuple[int, int]] = []
        for piece in pieces:
            header = b""
            if piece.number == 0:
                header = b"".join(self._tile_header_segments(first_parts[piece.tile]))
            if piece.packet_lengths:
                header += _plt_segments(piece.packet_lengths)
            psot = 12 + len(header) + 2 + sum(len(c) for c in piece.chunks)
            sot = struct.pack(">HHHIBB", 0xFF90, 10, piece.tile, psot, piece.number, counts[piece.tile])
            chunks += [sot, header, _SOD, *piece.chunks]
            lengths.append((piece.tile, psot))
        return b"".join([_SOC, self._main_header(lengths), *chunks, _EOC])

    # -- tiles and packets

    def _tiles(self) -> list[list[TilePart]]:
        by_tile: dict[int, list[TilePart]] = {}
        for tp in self.cs.tile_parts:
            by_tile.setdefault(tp.tile, []).append(tp)
        return [sorted(parts, key=lambda tp: tp.part) for parts in by_tile.values()]

    def _cut_tile(self, parts: list[TilePart]) -> list[_Piece]:
        if all(tp.plt is not None for tp in parts):
            return self._cut_packets(parts)
        if self.cs.htj2k:
            return self._cut_resolution_parts(parts)
        raise CutError(f"tile {parts[0].tile} has no PLT marker: packet boundaries are unknown")

    def _cut_packets(self, parts: list[TilePart]) -> list[_Piece]:
        cs = self.cs
        tile = parts[0].tile
        nc = len(cs.siz.components)
        styles = [cs.style(c) for c in range(nc)]
        subsampling = [(c.dx, c.dy) for c in cs.siz.components]
        old = packet_order(cs.cod.progression, cs.cod.layers, styles, 0, cs.siz.tile_rect(tile), subsampling)
        # Absolute (start, end, tile-part number) of every packet, from PLT.
        starts: list[int] = []
        ends: list[int] = []
        owner: list[int] = []
        for number, tp in enumerate(parts):
            pos = tp.body_start
            for length in tp.plt or ():
                starts.append(pos)
                pos += length
                ends.append(pos)
                owner.append(number)
            if pos != tp.end:
                raise CutError(f"PLT lengths of tile {tile} part {tp.part} do not add up to its size")
        if len(starts) != len(old):
            raise CutError(f"tile {tile}: PLT lists {len(starts)} packets, geometry implies {len(old)}")
        new = packet_order(
            cs.cod.progression, self.layers, styles, self.drop, self.siz.tile_rect(tile), subsampling
        )
        index = {key: i for i, key in enumerate(old)}
        try:
            picks = [index[key] for key in new]
        except KeyError as exc:
            raise CutError(f"packet {exc.args[0]} of the cut is not in the source") from None
        monotonic = all(a < b for a, b in pairwise(picks))
        groups: list[list[int]] = []
        if monotonic and len(parts) > 1:
            # Keep the source's tile-part divisions (e.g. one per resolution).
            current = -1
            for pick in picks:
                if owner[pick] != current:
                    groups.append([])
                    current = owner[pick]
                groups[-1].append(pick)
        else:
            groups.append(picks)
        result = []
        sequence = 0
        for number, group in enumerate(groups):
            if cs.cod.sop:
                chunks = _renumbered(self.view, group, starts, ends, sequence)
                sequence += len(group)
            else:
                chunks = _runs(self.view, group, starts, ends)
            result.append(_Piece(tile, number, [ends[p] - starts[p] for p in group], chunks))
        return result

    def _cut_resolution_parts(self, parts: list[TilePart]) -> list[_Piece]:
        """HTJ2K without PLT: each tile-part must hold exactly one resolution."""
        cs = self.cs
        levels = {cs.style(c).levels for c in range(len(cs.siz.components))}
        if (
            len(levels) != 1
            or cs.cod.progression not in (_RPCL, _RLCP)
            or cs.cod.layers != 1
            or len(parts) != levels.pop() + 1
        ):
            raise CutError(
                "HTJ2K codestream without PLT: only RPCL/RLCP with one tile-part per resolution can be cut"
            )
        keep = len(parts) - self.drop
        return [
            _Piece(tp.tile, number, [], [self.view[tp.body_start : tp.end]])
            for number, tp in enumerate(parts[:keep])
        ]

    # -- headers

    def _main_header(self, lengths: list[tuple[int, int]]) -> bytes:
        out: list[bytes | memoryview] = []
        had_tlm = False
        for seg in self.cs.main:
            if seg.marker == TLM:
                had_tlm = True
                continue
            if seg.marker == PLM:
                continue  # stale after the cut; PLT carries the lengths
            out.append(self._rewrite(seg))
        if had_tlm:
            out.append(_tlm_segments(lengths, self.siz.tiles_x * self.siz.tiles_y))
        return b"".join(out)

    def _tile_header_segments(self, tp: TilePart) -> Iterator[bytes | memoryview]:
        for seg in tp.segments:
            if seg.marker != PLT:
                yield self._rewrite(seg)

    def _rewrite(self, seg: Segment) -> bytes | memoryview:
        raw = self.view[seg.start : seg.end]
        marker = seg.marker
        if marker == SIZ:
            return self._siz(raw) if self.drop else raw
        if marker == COD:
            return self._cod(raw)
        if marker == COC and self.drop:
            return self._coc(raw)
        if marker in (QCD, QCC) and self.drop:
            return self._qcd(raw, marker == QCC)
        return raw

    def _siz(self, raw: memoryview) -> bytes:
        s = self.siz
        fixed = struct.pack(
            ">IIIIIIII", s.xsiz, s.ysiz, s.x0, s.y0, s.tile_width, s.tile_height, s.tile_x0, s.tile_y0
        )
        return bytes(raw[:6]) + fixed + bytes(raw[38:])

    def _cod(self, raw: memoryview) -> bytes:
        body = bytearray(raw)
        struct.pack_into(">H", body, 6, self.layers)
        if self.drop:
            levels = body[9]
            body[9] = levels - self.drop
            if body[4] & 1:  # explicit precinct sizes, one byte per resolution
                del body[14 + levels + 1 - self.drop : 14 + levels + 1]
                struct.pack_into(">H", body, 2, len(body) - 2)
        return bytes(body)

    def _coc(self, raw: memoryview) -> bytes:
        body = bytearray(raw)
        width = 1 if len(self.cs.siz.components) < 257 else 2
        at = 4 + width  # Scoc
        levels = body[at + 1]
        body[at + 1] = levels - self.drop
        if body[at] & 1:
            first = at + 6
            del body[first + levels + 1 - self.drop : first + levels + 1]
            struct.pack_into(">H", body, 2, len(body) - 2)
        return bytes(body)

    def _qcd(self, raw: memoryview, qcc: bool) -> bytes:
        body = bytearray(raw)
        at = 4
        if qcc:
            at += 1 if len(self.cs.siz.components) < 257 else 2
        style = body[at] & 0x1F
        if style == 1:  # scalar derived: one (exponent, mantissa), valid at any NL
            return bytes(body)
        size = 1 if style == 0 else 2
        first = at + 1
        count = (len(body) - first) // size
        keep = count - 3 * self.drop
        if keep < 1:
            raise CutError("quantization marker has fewer bands than the levels dropped")
        del body[first + keep * size :]
        struct.pack_into(">H", body, 2, len(body) - 2)
        return bytes(body)


def _runs(view: memoryview, picks: list[int], starts: list[int], ends: list[int]) -> list[bytes | memoryview]:
    """Slices covering the picked packets, merging byte-adjacent neighbours."""
    chunks: list[bytes | memoryview] = []
    run_start = run_end = -1
    for p in picks:
        if starts[p] == run_end:
            run_end = ends[p]
            continue
        if run_end >= 0:
            chunks.append(view[run_start:run_end])
        run_start, run_end = starts[p], ends[p]
    if run_end >= 0:
        chunks.append(view[run_start:run_end])
    return chunks


def _renumbered(
    view: memoryview, picks: list[int], starts: list[int], ends: list[int], first: int
) -> list[bytes | memoryview]:
    """Packets with their SOP sequence numbers (Nsop) renumbered from ``first``."""
    chunks: list[bytes | memoryview] = []
    for number, p in enumerate(picks, first):
        start, end = starts[p], ends[p]
        if view[start : start + 2] == b"\xff\x91":
            chunks.append(struct.pack(">HHH", 0xFF91, 4, number & 0xFFFF))
            start += 6
        chunks.append(view[start:end])
    return chunks


def _plt_segments(lengths: list[int]) -> bytes:
    """PLT marker segments (A.7.3), split so no Lplt exceeds 65535."""
    encoded = [_varint(n) for n in lengths]
    out = bytearray()
    body = bytearray()
    z = 0
    for item in encoded:
        if 3 + len(body) + len(item) > _MAX_SEGMENT:
            out += struct.pack(">HHB", PLT, 3 + len(body), z) + body
            body = bytearray()
            z += 1
        body += item
    out += struct.pack(">HHB", PLT, 3 + len(body), z) + body
    return bytes(out)


def _varint(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def _tlm_segments(lengths: list[tuple[int, int]], tiles: int) -> bytes:
    """TLM marker segments (A.7.1) listing every tile-part's Psot, in order."""
    wide = tiles > 255
    entry = ">HI" if wide else ">BI"
    stlm = (0x20 if wide else 0x10) | 0x40  # ST = 2 or 1 bytes, SP = 32-bit lengths
    per_segment = (_MAX_SEGMENT - 4) // struct.calcsize(entry)
    out = bytearray()
    for z, first in enumerate(range(0, len(lengths), per_segment)):
        chunk = lengths[first : first + per_segment]
        body = b"".join(struct.pack(entry, tile, psot) for tile, psot in chunk)
        out += struct.pack(">HHBB", TLM, 4 + len(body), z, stlm) + body
    return bytes(out)
