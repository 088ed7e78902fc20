from __future__ import annotations

import pytest

from dicomweb.accept import MediaRange, parse_accept

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def one(header: str) -> MediaRange:
    ranges = parse_accept(header)
    assert len(ranges) == 1, ranges
    return ranges[0]


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/octet-stream"; transfer-syntax="*"',  # OHIF
        "multipart/related; type=application/octet-stream; transfer-syntax=*",  # Cornerstone3D
        'multipart/related;type="application/octet-stream";transfer-syntax=*',
        '  Multipart/Related ;  TYPE = "Application/Octet-Stream" ;  Transfer-Syntax = "*"  ',
    ],
)
def test_viewer_frame_requests(header: str) -> None:
    media_range = one(header)
    assert media_range.type == "multipart/related"
    assert media_range.param("type") == "application/octet-stream"
    assert media_range.param("transfer-syntax") == "*"
    assert media_range.param("Transfer-Syntax") == "*"
    assert media_range.q == 1.0


def test_repeated_parameter_keeps_all_values() -> None:
    media_range = one(
        f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_VR_LE}; "
        "transfer-syntax=1.2.840.10008.1.2.4.90"
    )
    assert media_range.params == {
        "type": ["application/dicom"],
        "transfer-syntax": [EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.90"],
    }
    assert media_range.param("transfer-syntax") == EXPLICIT_VR_LE
    duplicated = one(
        f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_VR_LE}; "
        f"transfer-syntax={EXPLICIT_VR_LE}"
    )
    assert duplicated.params["transfer-syntax"] == [EXPLICIT_VR_LE, EXPLICIT_VR_LE]


def test_transfer_syntax_kept_as_given() -> None:
    assert one("application/dicom; Transfer-Syntax=ABC.def").param("transfer-syntax") == "ABC.def"


def test_several_ranges_sorted_by_q_stable() -> None:
    header = (
        'multipart/related; type="image/jp2"; q=0.5, '
        'multipart/related; type="application/octet-stream"; transfer-syntax=*; q=0.9, '
        "application/dicom+json, */*;q=0.1, image/jpeg; q=0.9"
    )
    ranges = parse_accept(header)
    assert [(r.type, r.param("type"), r.q) for r in ranges] == [
        ("application/dicom+json", None, 1.0),
        ("multipart/related", "application/octet-stream", 0.9),
        ("image/jpeg", None, 0.9),
        ("multipart/related", "image/jp2", 0.5),
        ("*/*", None, 0.1),
    ]
    assert "q" not in ranges[1].params


@pytest.mark.parametrize("header", [None, "", "   ", "undefined", "Undefined", '"undefined"', "null"])
def test_missing(header: str | None) -> None:
    assert parse_accept(header) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("*/*", "*/*"),
        ("*", "*/*"),
        ("application/dicom+json", "application/dicom+json"),
        ("image/jp2", "image/jp2"),
        ("IMAGE/JP2", "image/jp2"),
        ("application/*", "application/*"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text/html"),
    ],
)
def test_simple_types(header: str, expected: str) -> None:
    assert parse_accept(header)[0].type == expected


@pytest.mark.parametrize("header", [";;;", "foo", ",,,", "/", "foo/", "/bar", "*/json", "a b/c", '"', "q=1"])
def test_garbage_yields_nothing(header: str) -> None:
    assert parse_accept(header) == []


def test_garbage_between_good_ranges_is_dropped() -> None:
    ranges = parse_accept("foo, application/dicom;;;, ;;;, ,image/jp2;bad;x=1")
    assert [r.type for r in ranges] == ["application/dicom", "image/jp2"]
    assert ranges[1].params == {"x": ["1"]}


def test_quoted_separators_do_not_split() -> None:
    ranges = parse_accept('multipart/related; type="application/dicom; a=b, c"; x="p\\"q", image/jp2')
    assert [r.type for r in ranges] == ["multipart/related", "image/jp2"]
    assert ranges[0].param("type") == "application/dicom; a=b, c"
    assert ranges[0].param("x") == 'p"q'


def test_unterminated_quote_is_tolerated() -> None:
    media_range = one('multipart/related; type="application/dicom')
    assert media_range.param("type") == "application/dicom"


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("0.8", 0.8),
        ("1", 1.0),
        ("0", 0.0),
        ("0.000", 0.0),
        ("2", 1.0),
        ("-1", 1.0),
        ("abc", 1.0),
        ("", 1.0),
        ("nan", 1.0),
        ("inf", 1.0),
        ('"0.5"', 0.5),
    ],
)
def test_q_values(q: str, expected: float) -> None:
    assert one(f"application/dicom; q={q}").q == expected


def test_q_zero_kept_last() -> None:
    ranges = parse_accept("application/dicom;q=0, image/jp2")
    assert [(r.type, r.q) for r in ranges] == [("image/jp2", 1.0), ("application/dicom", 0.0)]


def test_first_q_wins_and_params_after_q_kept() -> None:
    media_range = one("multipart/related; q=0.4; type=application/dicom; q=0.9")
    assert media_range.q == 0.4
    assert media_range.param("type") == "application/dicom"


def test_query_values_take_precedence() -> None:
    ranges = parse_accept(
        "application/dicom",
        ['multipart/related; type="image/jp2", image/jpeg;q=0.5', "application/dicom+json"],
    )
    assert [r.type for r in ranges] == ["multipart/related", "application/dicom+json", "image/jpeg"]


def test_empty_query_values_fall_back_to_header() -> None:
    assert [r.type for r in parse_accept("image/jp2", [])] == ["image/jp2"]
    assert [r.type for r in parse_accept("image/jp2", None)] == ["image/jp2"]
    assert [r.type for r in parse_accept("image/jp2", ["", "undefined"])] == ["image/jp2"]


def test_form_decoded_plus_in_query() -> None:
    # accept=application/dicom+json arrives as "application/dicom json" after form decoding.
    assert parse_accept(None, ["application/dicom json"])[0].type == "application/dicom+json"


def test_media_range_is_frozen_and_hashable() -> None:
    media_range = one("application/dicom; transfer-syntax=*")
    with pytest.raises(AttributeError):
        media_range.q = 0.5  # type: ignore[misc]
    assert hash(media_range) == hash(one("application/dicom; transfer-syntax=*"))
    assert media_range == one("application/dicom;transfer-syntax=*")
