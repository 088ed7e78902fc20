"""The forms a stored frame can be sent in, and which one answers a request.

A request names a media type and a transfer syntax (either may be a wildcard) and may ask for part of
a master (`Subset`: the first L quality layers, or the smallest resolution level at least W x H). The
table FORMS lists, in order, each way of answering: what it accepts and what it needs of the instance.
`plan_frame` returns the first that fits; the archive then produces the bytes (`Archive.frame`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from storage.index import InstanceRecord
from storage.transfer_syntaxes import (
    EXPLICIT_LE,
    HTJ2K,
    HTJ2K_LOSSLESS_RPCL,
    J2K,
    J2K_LOSSLESS,
    OCTET_STREAM,
    syntax,
)

JP2, JPHC = "image/jp2", "image/jphc"
ANY_MEDIA = frozenset({OCTET_STREAM, "*/*", "*"})


@dataclass(frozen=True)
class Subset:
    """What part of the master a request wants: None means "all"."""

    layers: int | None = None
    fsiz: tuple[int, int] | None = None

    @property
    def wanted(self) -> bool:
        return self.layers is not None or self.fsiz is not None


WHOLE = Subset()


class Source(Enum):
    STORED = "stored"  # the stored frame, as it is
    NATIVE = "native"  # decoded to uncompressed little endian
    CUT = "cut"  # the master's JPEG 2000 codestream, cut to the subset (or whole)
    HTJ2K = "htj2k"  # the master transcoded to lossless HTJ2K, resolution-cut to the subset


@dataclass(frozen=True)
class FramePlan:
    media_type: str
    # The transfer syntax of the answer; a cut or a whole master is labelled by what it turns out to be.
    transfer_syntax: str
    source: Source


@dataclass(frozen=True)
class Form:
    """One way of answering: the media types and transfer-syntax parameters it answers (None: the
    parameter was absent), when it applies, and the plan it gives."""

    media_types: frozenset[str] | None  # None: the stored syntax's own (compressed) media type
    syntaxes: Callable[[InstanceRecord, Subset], frozenset[str | None]]
    applies: Callable[[InstanceRecord, Subset], bool]
    plan: Callable[[InstanceRecord], FramePlan]


def _addressable(rec: InstanceRecord) -> bool:
    """The index knows where each frame lies in the file (not deflated, not bit-packed)."""
    return bool(rec.frames)


def _stored_plan(rec: InstanceRecord) -> FramePlan:
    return FramePlan(syntax(rec.transfer_syntax).media_type, rec.transfer_syntax, Source.STORED)


def _cuttable(rec: InstanceRecord, subset: Subset) -> bool:
    """A master to cut: the stored one, or (for a cut only, always labelled lossy) one encoded on the
    fly from the received frame while the master is still being made."""
    return rec.is_master or (rec.pending_master and subset.wanted)


def _no_cut(rec: InstanceRecord, subset: Subset) -> bool:
    """The request is not for a cut of a master (a subset of an instance without one is ignored)."""
    return not (subset.wanted and _cuttable(rec, subset))


def _compressed(rec: InstanceRecord) -> bool:
    return _addressable(rec) and not syntax(rec.transfer_syntax).native


_NATIVE_PLAN = FramePlan(OCTET_STREAM, EXPLICIT_LE, Source.NATIVE)
_CUT_PLAN = FramePlan(JP2, J2K, Source.CUT)
_STAR = frozenset({"*"})

FORMS: tuple[Form, ...] = (
    # transfer-syntax=* with a subset of a master: the cut, as JPEG 2000.
    Form(ANY_MEDIA, lambda r, s: _STAR, lambda r, s: s.wanted and _cuttable(r, s), lambda r: _CUT_PLAN),
    # transfer-syntax=*: uncompressed frames as they are (or decoded from deflated, bit-packed files)...
    Form(
        ANY_MEDIA,
        lambda r, s: _STAR,
        lambda r, s: _no_cut(r, s) and not _compressed(r),
        lambda r: _NATIVE_PLAN,
    ),
    # ... and compressed frames as stored.
    Form(ANY_MEDIA, lambda r, s: _STAR, _no_cut, _stored_plan),
    # Uncompressed, decoded from whatever pydicom can decode; never a cut.
    Form(
        ANY_MEDIA,
        lambda r, s: frozenset({None, EXPLICIT_LE}),
        lambda r, s: _no_cut(r, s) and syntax(r.transfer_syntax).decodable,
        lambda r: _NATIVE_PLAN,
    ),
    # JPEG 2000 from the master: whole (.90) only when no subset is asked for.
    Form(
        frozenset({JP2}),
        lambda r, s: frozenset(
            {None, "*", J2K} | (set() if s.wanted or r.transfer_syntax == J2K else {J2K_LOSSLESS})
        ),
        _cuttable,
        lambda r: _CUT_PLAN,
    ),
    # HTJ2K from the master: it has one quality layer, so only resolution cuts change its label.
    Form(
        frozenset({JPHC}),
        lambda r, s: frozenset({None, "*", HTJ2K} | (set() if s.fsiz else {HTJ2K_LOSSLESS_RPCL})),
        lambda r, s: r.is_master or (r.pending_master and s.fsiz is not None),
        lambda r: FramePlan(JPHC, HTJ2K, Source.HTJ2K),
    ),
    # The stored compressed frame in its own media type, when no subset is asked for.
    Form(
        None,
        lambda r, s: frozenset({None, "*", r.transfer_syntax}),
        lambda r, s: _compressed(r) and not s.wanted,
        _stored_plan,
    ),
)


def plan_frame(
    media_type: str, transfer_syntax: str | None, rec: InstanceRecord, subset: Subset
) -> FramePlan | None:
    """How to answer a request for `media_type` in `transfer_syntax` ('*' = as stored, None = the
    media type's default), or None if this instance cannot be sent so."""
    for form in FORMS:
        media_types = form.media_types or {syntax(rec.transfer_syntax).media_type} - ANY_MEDIA
        if (
            media_type in media_types
            and transfer_syntax in form.syntaxes(rec, subset)
            and form.applies(rec, subset)
        ):
            return form.plan(rec)
    return None
