"""Which attributes belong to which query level, and tag/keyword look-ups."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword

STUDY_TAGS = frozenset(
    [
        0x00080005,
        0x00080020,
        0x00080030,
        0x00080050,
        0x00080051,
        0x00080090,
        0x00080201,
        0x00081030,
        0x00081032,
        0x00081060,
        0x00081080,
        0x0020000D,
        0x00200010,
        0x00321032,
        0x00321033,
        0x00321060,
        0x00401012,
        0x00101002,
    ]
)
SERIES_TAGS = frozenset(
    [
        0x00080005,
        0x00080021,
        0x00080031,
        0x00080060,
        0x00080064,
        0x00080070,
        0x00080080,
        0x00080201,
        0x00081010,
        0x0008103E,
        0x00081040,
        0x00081050,
        0x00081070,
        0x00081090,
        0x00081111,
        0x00180015,
        0x00181030,
        0x0020000E,
        0x00200011,
        0x00200052,
        0x00200060,
        0x00400244,
        0x00400245,
        0x00400254,
        0x00400275,
    ]
)


_STUDY_KEYS = frozenset(f"{t:08X}" for t in STUDY_TAGS)
_SERIES_KEYS = frozenset(f"{t:08X}" for t in SERIES_TAGS)


def is_study_level(key: str) -> bool:
    """Whether the attribute with this DICOM JSON key (e.g. "00100010") is kept at study level."""
    # The whole Patient module (group 0010) is returned at study level.
    return key in _STUDY_KEYS or key.startswith("0010")


def is_series_level(key: str) -> bool:
    return key in _SERIES_KEYS


def tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def parse_attribute(name: str) -> int | None:
    """A keyword (PatientName) or a tag (00100010, 0010,0010, (0010,0010)) -> int tag; None if unknown."""
    text = name.strip().strip("()").replace(",", "")
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(name.strip())
    return tag


def vr_of(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
