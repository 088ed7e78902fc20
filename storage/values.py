"""Reading values out of DICOM JSON attributes, and normalising dates and times for range matching."""

from __future__ import annotations

from typing import Any


def json_values(attrs: dict[str, Any], tag_hex: str) -> list[str]:
    """All values of an attribute as strings (PN as its Alphabetic group); [] when absent or empty."""
    elem = attrs.get(tag_hex)
    if not elem:
        return []
    out = []
    for v in elem.get("Value", []):
        if isinstance(v, dict):
            if "Alphabetic" in v or "Ideographic" in v or "Phonetic" in v:
                out.append(v.get("Alphabetic", ""))
            # Sequence items are not plain values.
            continue
        out.append("" if v is None else str(v))
    return out


def json_text(attrs: dict[str, Any], tag_hex: str) -> str:
    return "\\".join(json_values(attrs, tag_hex))


def json_int(attrs: dict[str, Any], tag_hex: str) -> int | None:
    values = json_values(attrs, tag_hex)
    try:
        return int(float(values[0])) if values else None
    except ValueError:
        return None


def pixel_data_size(attrs: dict[str, Any], frames: int) -> int:
    """Uncompressed Pixel Data size in bytes, as Lossy Image Compression Ratio counts it: Rows x Columns x
    Samples per Pixel x Bits Allocated / 8 x frames (0 without pixels). Migration 0005 keeps a copy."""
    rows, columns = json_int(attrs, "00280010") or 0, json_int(attrs, "00280011") or 0
    samples, bits = json_int(attrs, "00280002") or 1, json_int(attrs, "00280100") or 0
    return rows * columns * samples * bits * max(frames, 1) // 8


def normalize_time(value: str, *, upper: bool = False) -> str:
    """'1530' -> '153000.000000' (or '155959.999999' as an upper bound), comparable as text."""
    value = value.strip().replace(":", "")
    if not value:
        return ""
    whole, _, frac = value.partition(".")
    whole = whole[:6]
    fill = "595959"[len(whole) :] if upper and len(whole) >= 2 else ("99" if upper else "")
    if upper and len(whole) < 2:
        return "235959.999999"
    whole = (whole + (fill if upper else "000000"[len(whole) :]))[:6]
    frac = (frac + ("999999" if upper else "000000"))[:6]
    return f"{whole}.{frac}"


def normalize_date(value: str) -> str:
    return value.strip().replace("-", "").replace(".", "")[:8]


def normalize_datetime(value: str, *, upper: bool = False) -> str:
    """YYYYMMDDHHMMSS.FFFFFF for comparing DT values of different precision (offsets ignored)."""
    value = value.strip()
    for sign in "+-":
        if sign in value[8:]:
            value = value[: 8 + value[8:].index(sign)]
    date, rest = value[:8], value[8:]
    if len(date) < 8:
        date = date + ("1231"[len(date) - 4 :] if upper and len(date) >= 4 else "0101"[len(date) - 4 :])
        date = date[:8]
    time = normalize_time(rest, upper=upper) if rest else ("235959.999999" if upper else "000000.000000")
    return date + time
