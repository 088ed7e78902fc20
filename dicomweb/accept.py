"""Liberal parsing of Accept headers and ``accept=`` query parameters.

Written against what DICOMweb viewers actually send (OHIF, Cornerstone3D,
dicomweb-client, browsers): quoted and unquoted parameters, repeated
``transfer-syntax`` parameters, the literal string ``undefined``, and so on.
Nothing here raises; unusable media ranges are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomweb.header_params import is_token, split_unquoted, unquote

__all__ = ["MediaRange", "parse_accept"]

# Values that JavaScript clients send when they meant "no Accept header".
_MISSING = frozenset({"", "undefined", "null"})


@dataclass(frozen=True)
class MediaRange:
    type: str  # "type/subtype", lower-cased, e.g. "multipart/related" or "*/*"
    # lower-cased name -> values in order of appearance, quotes removed
    params: dict[str, list[str]] = field(default_factory=dict, hash=False)
    q: float = 1.0

    def param(self, name: str) -> str | None:
        """First value of parameter ``name`` (case-insensitive), or None."""
        values = self.params.get(name.lower())
        return values[0] if values else None


def parse_accept(header: str | None, query_values: list[str] | None = None) -> list[MediaRange]:
    """Media ranges, highest q first (stable for equal q).

    ``query_values`` are the ``accept=`` query parameters (PS3.18 8.3.3.1); each
    may hold a comma-separated list and, when any is present, they replace the
    header. Ranges with q=0 are kept so callers can exclude them explicitly.
    """
    sources = [value for value in query_values or () if not _is_missing(value)]
    if not sources and header is not None and not _is_missing(header):
        sources = [header]
    ranges = [
        media_range
        for source in sources
        for element in split_unquoted(source, ",")
        if (media_range := _parse_media_range(element)) is not None
    ]
    ranges.sort(key=lambda media_range: -media_range.q)
    return ranges


def _is_missing(value: str | None) -> bool:
    return value is None or value.strip().strip('"').strip().lower() in _MISSING


def _parse_media_range(element: str) -> MediaRange | None:
    media_type, *raw_params = split_unquoted(element, ";")
    normalised = _normalise_media_type(media_type)
    if normalised is None:
        return None
    params: dict[str, list[str]] = {}
    q: float | None = None
    for raw in raw_params:
        name, sep, value = raw.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        value = unquote(value.strip())
        if name == "q":
            # RFC 9110 puts q last, but clients put parameters after it too: keep
            # them all and let the first q win.
            q = _parse_q(value) if q is None else q
            continue
        if name == "type":
            value = value.lower()
        params.setdefault(name, []).append(value)
    return MediaRange(normalised, params, 1.0 if q is None else q)


def _normalise_media_type(text: str) -> str | None:
    text = text.strip()
    if text == "*":  # sent by some old clients for */*
        return "*/*"
    main, sep, sub = text.partition("/")
    main = main.strip().lower()
    # Form-decoding turns the "+" of "application/dicom+json" in a query string
    # into a space; whitespace is never valid inside a subtype, so restore it.
    sub = "+".join(sub.split()).lower()
    if not sep or not is_token(main) or not is_token(sub):
        return None
    if main == "*" and sub != "*":
        return None
    return f"{main}/{sub}"


def _parse_q(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        return 1.0
    # NaN fails both comparisons and so also falls back to 1.0.
    return q if 0.0 <= q <= 1.0 else 1.0
