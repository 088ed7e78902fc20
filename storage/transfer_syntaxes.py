"""The one table of transfer syntaxes: what each is, what the server can do with it.

Built on pydicom's UID knowledge (endianness, VR, encapsulation); the rest is what this server does:
which it can decode, which hold pixel values exactly, which are JPEG 2000 codestreams it can cut, and
what a frame of each is called as a media type (PS3.18 Table 8.7.3-5).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class TransferSyntax:
    uid: str
    # Media type of a frame or bulk-data part in this syntax (octet-stream for the native ones).
    media_type: str = OCTET_STREAM
    # pydicom and its plugins decode it here, so it can be sent uncompressed.
    decodable: bool = False
    # Decoding gives exactly the values that were encoded (so a lossless master can be made from it).
    lossless: bool = False
    # "j2k" or "htj2k": a JPEG 2000 codestream, decodable at reduced resolution and cuttable.
    family: str | None = None
    # Reversible colour in a JPEG 2000 codestream (YBR_RCT) decodes to RGB exactly.
    reversible_colour: bool = False

    @property
    def native(self) -> bool:
        return not UID(self.uid).is_encapsulated

    @property
    def little_native(self) -> bool:
        """Uncompressed little endian, not deflated: frame bytes are usable as they lie in the file."""
        return self.uid in (IMPLICIT_LE, EXPLICIT_LE)

    @property
    def codestream(self) -> bool:
        """Frames are codestreams ending at a marker: sent without the fragment's pad byte."""
        return self.media_type in ("image/jp2", "image/jphc", "image/jpeg", "image/jls", "image/jpx")


def _table(*rows: TransferSyntax) -> dict[str, TransferSyntax]:
    return {row.uid: row for row in rows}


SYNTAXES: dict[str, TransferSyntax] = _table(
    TransferSyntax(IMPLICIT_LE, decodable=True, lossless=True),
    TransferSyntax(EXPLICIT_LE, decodable=True, lossless=True),
    TransferSyntax(DEFLATED_LE, decodable=True, lossless=True),
    TransferSyntax(EXPLICIT_BE, decodable=True, lossless=True),
    TransferSyntax("1.2.840.10008.1.2.5", "image/dicom-rle", decodable=True, lossless=True),
    TransferSyntax("1.2.840.10008.1.2.4.50", "image/jpeg", decodable=True),
    TransferSyntax("1.2.840.10008.1.2.4.51", "image/jpeg", decodable=True),
    TransferSyntax("1.2.840.10008.1.2.4.57", "image/jpeg", decodable=True, lossless=True),
    TransferSyntax("1.2.840.10008.1.2.4.70", "image/jpeg", decodable=True, lossless=True),
    TransferSyntax("1.2.840.10008.1.2.4.80", "image/jls", decodable=True, lossless=True),
    TransferSyntax("1.2.840.10008.1.2.4.81", "image/jls", decodable=True),
    TransferSyntax(
        J2K_LOSSLESS, "image/jp2", decodable=True, lossless=True, family="j2k", reversible_colour=True
    ),
    TransferSyntax(J2K, "image/jp2", decodable=True, family="j2k"),
    TransferSyntax("1.2.840.10008.1.2.4.92", "image/jpx"),
    TransferSyntax("1.2.840.10008.1.2.4.93", "image/jpx"),
    TransferSyntax(
        HTJ2K_LOSSLESS, "image/jphc", decodable=True, lossless=True, family="htj2k", reversible_colour=True
    ),
    TransferSyntax(
        HTJ2K_LOSSLESS_RPCL,
        "image/jphc",
        decodable=True,
        lossless=True,
        family="htj2k",
        reversible_colour=True,
    ),
    TransferSyntax(HTJ2K, "image/jphc", decodable=True, family="htj2k"),
    TransferSyntax("1.2.840.10008.1.2.4.100", "video/mpeg"),
    TransferSyntax("1.2.840.10008.1.2.4.101", "video/mpeg"),
    *(TransferSyntax(f"1.2.840.10008.1.2.4.{n}", "video/mp4") for n in range(102, 107)),
)


def syntax(uid: str) -> TransferSyntax:
    """What the server knows of `uid`; an unknown one is treated as opaque (not decodable, not lossless)."""
    return SYNTAXES.get(uid) or TransferSyntax(uid)


def is_native(uid: str) -> bool:
    known = SYNTAXES.get(uid)
    return known.native if known else False
