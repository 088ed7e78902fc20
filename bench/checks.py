"""Answer checks: every timed answer is checked, so a fast wrong answer is reported as wrong instead of
winning. A check returns None for a right answer, else what is wrong with it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.corpus import Corpus
from bench.http_client import Response, content_type_params, parse_multipart

Check = Callable[[Response], str | None]


CHECK_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError)


def safe_check(check: Check, r: Response) -> str | None:
    """A malformed answer (e.g. a list of strings where objects belong) must
    be reported as wrong, not crash the whole benchmark."""
    try:
        return check(r)
    except CHECK_ERRORS as exc:
        return f"malformed answer ({type(exc).__name__}: {exc})"


def checked(r: Response, media: str, what: str) -> bytes:
    """The body of a 200 answer of type ``media``; RuntimeError naming ``what`` otherwise."""
    if r.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.content[:200]!r}")
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith(media):
        raise RuntimeError(f"{what}: Content-Type {ctype!r}, expected {media}")
    return r.content


def check_stow_answer(resp: Response, expected: int) -> str | None:
    if resp.status_code != 200:
        return f"STOW HTTP {resp.status_code}: {resp.text[:200]!r}"
    try:
        doc = resp.json()
    except ValueError:
        return None  # e.g. an XML answer: status is all we can check
    failed = doc.get("00081198", {}).get("Value", [])
    stored = doc.get("00081199", {}).get("Value", [])
    if failed:
        return f"STOW reported {len(failed)} failed instance(s)"
    if len(stored) != expected:
        return f"STOW acknowledged {len(stored)} of {expected} instances"
    return None


def _json_array(r: Response) -> tuple[list | None, str]:
    """The JSON array a 200 answer carries, or None and what is wrong with the answer."""
    if r.status_code != 200:
        return None, f"HTTP {r.status_code}: {r.text[:200]!r}"
    try:
        value = r.json()
    except ValueError:
        return None, "answer is not JSON"
    if not isinstance(value, list):
        return None, "answer is not a JSON array"
    return value, ""


def qido_check(expected: int, name_prefix: str = "") -> Callable[[Response], str | None]:
    def check(r: Response) -> str | None:
        rows, problem = _json_array(r)
        if rows is None:
            return problem
        if len(rows) != expected:
            return f"{len(rows)} studies returned, expected {expected}"
        for row in rows:
            if "0020000D" not in row:
                return "a result lacks StudyInstanceUID"
            if name_prefix:
                names = row.get("00100010", {}).get("Value", [{}])
                alpha = names[0].get("Alphabetic", "") if names and isinstance(names[0], dict) else ""
                if not alpha.upper().startswith(name_prefix.upper()):
                    return f"result PatientName {alpha!r} does not match {name_prefix}*"
                # The small studies all have a StudyDescription: includefield must bring it.
                if "Value" not in row.get("00081030", {}):
                    return "includefield 00081030 (StudyDescription) missing from a result"
        return None

    return check


def metadata_check(sops: Sequence[str]) -> Callable[[Response], str | None]:
    want = set(sops)

    def check(r: Response) -> str | None:
        items, problem = _json_array(r)
        if items is None:
            return problem
        if len(items) != len(want):
            return f"{len(items)} instances, expected {len(want)}"
        got = {it.get("00080018", {}).get("Value", [None])[0] for it in items}
        if got != want:
            return f"SOPInstanceUIDs differ from the series ({len(got & want)} of {len(want)} match)"
        for it in items:
            for tag in ("00280010", "00280011", "00200032", "00200013"):
                if "Value" not in it.get(tag, {}):
                    return f"an instance lacks {tag}"
        return None

    return check


# --------------------------------------------------------------------------
# Frames

NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
LOSSLESS_TS = {
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.5",
}
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_TS = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}


def _sign_extend(a: np.ndarray, bits: int) -> np.ndarray:
    a = a.astype(np.int32) & ((1 << bits) - 1)
    return ((a ^ (1 << (bits - 1))) - (1 << (bits - 1))).astype(np.int16)


def decode_frame(ts: str, payload: bytes) -> np.ndarray | None:
    """Decode a compressed frame if imagecodecs can; None if unsupported."""
    try:
        import imagecodecs
    except ImportError:
        return None
    decoders = {
        "1.2.840.10008.1.2.4.57": "ljpeg_decode",
        "1.2.840.10008.1.2.4.70": "ljpeg_decode",
        "1.2.840.10008.1.2.4.80": "jpegls_decode",
        "1.2.840.10008.1.2.4.81": "jpegls_decode",
        "1.2.840.10008.1.2.4.90": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.91": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.201": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.202": "jpeg2k_decode",
        "1.2.840.10008.1.2.4.203": "jpeg2k_decode",
    }
    fn = getattr(imagecodecs, decoders.get(ts, ""), None)
    if fn is None:
        return None
    try:
        return np.asarray(fn(payload))
    except (RuntimeError, ValueError):  # codec errors: the frame is broken, report it
        return np.empty(0)


@dataclass
class FrameVerdict:
    problem: str | None  # wrong answer: disqualifies the figure
    syntax: str  # transfer syntax seen (for the report)
    warnings: list[str] = field(default_factory=list)  # protocol nits, pixels still right


def check_frame(corpus: Corpus, index: int, r: Response, bits_stored: int = 14) -> FrameVerdict:
    """Check one frame answer against the source pixels.

    The corpus is lossless, so every answer must reproduce the source pixels
    exactly (native bytes, or the decoded codestream); syntaxes we cannot
    decode are only size-checked and reported as "not verified". Deviations
    from the requested media type are warnings: the pixels are still right.
    """
    if r.status_code != 200:
        return FrameVerdict(f"HTTP {r.status_code}", "?")
    try:
        parts = parse_multipart(r.headers.get("content-type", ""), r.content)
    except ValueError as exc:
        return FrameVerdict(str(exc), "?")
    if len(parts) != 1 or not parts[0][1]:
        return FrameVerdict(f"{len(parts)} parts / empty frame", "?")
    headers, payload = parts[0]
    mime, params = content_type_params(headers.get("content-type", ""))
    ts = params.get("transfer-syntax", "")
    warnings = []
    if mime != "application/octet-stream":
        warnings.append(
            f"part Content-Type {mime or 'missing'!r} although the Accept asked for "
            'type="application/octet-stream"'
        )
    if ts in J2K_TS and payload.startswith(JP2_SIGNATURE):
        warnings.append(f"JP2 file (boxes) sent as {ts}; DICOM encapsulates a bare J2K codestream")
    expected_hash = corpus.ct_frame_sha256[index]
    if ts in NATIVE_TS or (not ts and len(payload) == corpus.ct_frame_bytes()):
        if hashlib.sha256(payload).hexdigest() != expected_hash:
            return FrameVerdict("native frame differs from the stored pixels", ts or "native?", warnings)
        return FrameVerdict(None, ts or "native?", warnings)
    arr = decode_frame(ts, payload)
    if arr is None:
        return FrameVerdict(None, f"{ts or mime or 'unknown'} (not verified)", warnings)
    if arr.size != corpus.ct_rows * corpus.ct_columns:
        return FrameVerdict(
            f"frame ({ts}) decodes to {arr.shape}, expected {corpus.ct_rows}x{corpus.ct_columns}",
            ts,
            warnings,
        )
    # Decoders differ in how they hand back signed 14-bit data (int16, or
    # uint16 in two's complement of BitsStored): accept either.
    candidates = [_sign_extend(arr, bits_stored)]
    if arr.dtype.itemsize == 2:
        candidates.append(arr)
    if any(hashlib.sha256(c.astype("<i2").tobytes()).hexdigest() == expected_hash for c in candidates):
        return FrameVerdict(None, ts, warnings)
    if ts in LOSSLESS_TS:
        return FrameVerdict(f"lossless frame ({ts}) differs from the stored pixels", ts, warnings)
    # transfer-syntax=* lets the server pick the syntax, but silently lossy
    # pixels for a lossless original are not an answer a viewer can use.
    return FrameVerdict(f"lossy frame ({ts}) for a lossless original", ts, warnings)


@dataclass
class FramesVerdict:
    problem: str | None
    seen: str  # "syntax xN, ..."
    warnings: str  # "" or "warning xN; ..."
    payload_bytes: int = 0


def _counted(counts: dict[str, int], sep: str = "; ") -> str:
    return sep.join(f"{v} frame(s): {k}" for k, v in counts.items())


def check_frames(corpus: Corpus, answers: Sequence[Response | Exception]) -> FramesVerdict:
    """Check the answers to frame_urls(), in slice order (exceptions: failed requests)."""
    problems: dict[str, int] = {}
    warnings: dict[str, int] = {}
    syntaxes: dict[str, int] = {}
    size = 0
    for i, a in enumerate(answers):
        if isinstance(a, Exception):
            v = FrameVerdict(f"{type(a).__name__}: {a}", "?")
        else:
            size += len(a.content)
            try:
                v = check_frame(corpus, i, a)
            except CHECK_ERRORS as exc:
                v = FrameVerdict(f"malformed answer ({type(exc).__name__}: {exc})", "?")
        syntaxes[v.syntax] = syntaxes.get(v.syntax, 0) + 1
        if v.problem:
            problems[v.problem] = problems.get(v.problem, 0) + 1
        for w in v.warnings:
            warnings[w] = warnings.get(w, 0) + 1
    seen = ", ".join(f"{k or '?'} x{v}" for k, v in syntaxes.items())
    return FramesVerdict(_counted(problems) or None, seen, _counted(warnings), size)
