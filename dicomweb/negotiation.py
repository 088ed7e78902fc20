"""Choosing what to send: media types and transfer syntaxes (PS3.18 8.7)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from dicomweb.accept import MediaRange, parse_accept


def accept_ranges(request: Request) -> list[MediaRange]:
    query = request.query_params.getlist("accept")
    return [m for m in parse_accept(request.headers.get("accept"), query or None) if m.q > 0]


@dataclass(frozen=True)
class Choice:
    """One acceptable answer: the part media type and the transfer syntax ('*' = as stored, None =
    the media type's default), and whether the response is multipart."""

    media_type: str
    transfer_syntax: str | None
    multipart: bool


def choices(ranges: list[MediaRange], default_type: str, single_types: set[str]) -> list[Choice]:
    """Acceptable (media type, transfer syntax) pairs in order of preference.

    ``multipart/related`` without ``type`` means the resource's default type. ``*/*`` and a missing
    header mean the default. Every transfer-syntax value of a repeated parameter is a candidate.
    """
    if not ranges:
        return [Choice(default_type, None, True)]
    out: list[Choice] = []
    for r in ranges:
        syntaxes: list[str | None] = [*r.params.get("transfer-syntax", [])] or [None]
        if r.type == "multipart/related":
            media = (r.param("type") or default_type).lower()
            multipart = True
        elif r.type in ("*/*", "multipart/*"):
            media, multipart = default_type, True
        elif r.type in single_types:
            media, multipart = r.type, False
        else:
            continue
        out += [Choice(media, ts, multipart) for ts in syntaxes]
    return out
