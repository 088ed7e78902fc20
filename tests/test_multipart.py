from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dicomweb import multipart
from dicomweb.multipart import (
    MultipartError,
    Part,
    boundary_from_content_type,
    cleanup,
    closing,
    encode_multipart,
    make_boundary,
    multipart_content_type,
    multipart_length,
    part_header,
    read_multipart,
)

B = "bound"
SAMPLE = (
    b"preamble text\r\n"
    b"--bound\r\n"
    b"Content-Type: application/dicom\r\n"
    b"Content-Location: /a\r\n"
    b"\r\n"
    b"first\r\n--boun body\r\n-- \r\n--bound-x\r\n--boundary\r\n"
    b"--bound \t\r\n"
    b"content-type: application/octet-stream\r\n"
    b"\r\n"
    b"\r\n"
    b"--bound--\r\n"
    b"epilogue --bound\r\n"
)
SAMPLE_BODIES = [b"first\r\n--boun body\r\n-- \r\n--bound-x\r\n--boundary", b""]


async def chunked(data: bytes, sizes: Iterable[int] | int) -> AsyncIterator[bytes]:
    if isinstance(sizes, int):
        sizes = [sizes] * (len(data) // sizes + 1)
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


def bodies(parts: list[Part]) -> list[bytes]:
    return [Path(part.path).read_bytes() for part in parts]


async def parse(data: bytes, tmp_path: Path, sizes: Iterable[int] | int = 65536, **kw) -> list[Part]:
    return await read_multipart(chunked(data, sizes), B, str(tmp_path), **kw)


async def expect_error(data: bytes, tmp_path: Path, match: str, **kw) -> None:
    with pytest.raises(MultipartError, match=match):
        await parse(data, tmp_path, **kw)
    assert os.listdir(tmp_path) == [], "temp files must be removed on error"


# --------------------------------------------------------------------------- boundary_from_content_type


@pytest.mark.parametrize(
    "header",
    [
        "multipart/related; boundary=abc",
        'multipart/related; type="application/dicom"; boundary="abc"',
        "multipart/related;boundary=abc;type=application/dicom",
        "Multipart/Related; BOUNDARY=abc",
        'multipart/related ;  boundary = abc  ; type = "application/dicom"',
        'multipart/related; type="application/dicom; x=1"; boundary=abc',
    ],
)
def test_boundary_variants(header: str) -> None:
    assert boundary_from_content_type(header) == "abc"


def test_boundary_quoted_special_characters() -> None:
    ct = 'multipart/related; boundary="a;b=c, d/e:f?"; type="application/dicom"'
    assert boundary_from_content_type(ct) == "a;b=c, d/e:f?"
    assert boundary_from_content_type('multipart/related; boundary="a\\"b"') == 'a"b'


def test_boundary_length_limits() -> None:
    assert boundary_from_content_type("multipart/related; boundary=" + "x" * 70) == "x" * 70
    with pytest.raises(MultipartError, match="1 to 70"):
        boundary_from_content_type("multipart/related; boundary=" + "x" * 71)
    with pytest.raises(MultipartError, match="1 to 70"):
        boundary_from_content_type('multipart/related; boundary=""')


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("multipart/related", "missing boundary parameter"),
        ('multipart/related; type="application/dicom"', "missing boundary parameter"),
        ("multipart/related; boundary", "missing boundary parameter"),
        ("", "missing Content-Type"),
        ("application/dicom; boundary=abc", "expected a multipart"),
        ('multipart/related; boundary="abc "', "must not end with a space"),
        ("multipart/related; boundary=ab\x01c", "control"),
    ],
)
def test_boundary_errors(header: str, reason: str) -> None:
    with pytest.raises(MultipartError, match=reason):
        boundary_from_content_type(header)


# --------------------------------------------------------------------------- reader: framing


@pytest.mark.asyncio
async def test_sample_parses(tmp_path: Path) -> None:
    parts = await parse(SAMPLE, tmp_path)
    assert bodies(parts) == SAMPLE_BODIES
    assert parts[0].headers == {"content-type": "application/dicom", "content-location": "/a"}
    assert parts[0].content_type == "application/dicom"
    assert parts[1].content_type == "application/octet-stream"
    assert [p.size for p in parts] == [len(b) for b in SAMPLE_BODIES]
    assert all(Path(p.path).parent == tmp_path for p in parts)


@pytest.mark.asyncio
async def test_one_byte_chunks(tmp_path: Path) -> None:
    parts = await parse(SAMPLE, tmp_path, sizes=1)
    assert bodies(parts) == SAMPLE_BODIES


@pytest.mark.asyncio
async def test_split_at_every_offset(tmp_path: Path) -> None:
    for cut in range(len(SAMPLE) + 1):
        parts = await parse(SAMPLE, tmp_path, sizes=[cut, len(SAMPLE)])
        assert bodies(parts) == SAMPLE_BODIES, cut
        cleanup(parts)
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_random_chunk_sizes(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for _ in range(300):
        sizes = [rng.randint(1, 12) for _ in range(len(SAMPLE))]
        parts = await parse(SAMPLE, tmp_path, sizes=sizes)
        assert bodies(parts) == SAMPLE_BODIES, sizes
        cleanup(parts)


@pytest.mark.asyncio
async def test_random_bodies_across_write_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny batch makes every chunk border also a flush border.
    monkeypatch.setattr(multipart, "WRITE_BATCH", 7)
    rng = random.Random(99)
    alphabet = [b"\r", b"\n", b"-", b"b", b"o", b"u", b"n", b"d", b"\r\n--boun", b"x"]
    for _ in range(200):
        payloads = [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3)]
        payloads = [p for p in payloads if b"\r\n--bound" not in b"\r\n" + p + b"\r\n"] or [b"x"]
        data = encode_multipart(B, [("application/dicom", p) for p in payloads])
        sizes = [rng.randint(1, 9) for _ in range(len(data))]
        parts = await parse(data, tmp_path, sizes=sizes)
        assert bodies(parts) == payloads
        cleanup(parts)


@pytest.mark.asyncio
async def test_delimiter_like_bytes_in_body(tmp_path: Path) -> None:
    tricky = [
        b"\r\n--boun",  # prefix of the delimiter at the end of the body
        b"\r\n--bound-",  # boundary followed by a single dash
        b"\r\n--boundX\r\n",  # boundary followed by other characters
        b"--bound\r\n",  # no CRLF before: not a delimiter
        b"\r\n--bound \tx",  # padding followed by text
        b"\r",
        b"\r\n",
        b"\r\n-",
    ]
    for body in tricky:
        data = encode_multipart(B, [("application/dicom", body)])
        for size in (1, 3, len(data)):
            parts = await parse(data, tmp_path, sizes=size)
            assert bodies(parts) == [body], (body, size)
            cleanup(parts)


@pytest.mark.asyncio
async def test_no_preamble_lf_headers_padding_and_no_trailing_crlf(tmp_path: Path) -> None:
    data = b"--bound  \nContent-Type: a/b\nX-Folded: one\n  two\n\nbody\r\n--bound--"
    parts = await parse(data, tmp_path, sizes=2)
    assert bodies(parts) == [b"body"]
    assert parts[0].headers == {"content-type": "a/b", "x-folded": "one two"}


@pytest.mark.asyncio
async def test_boundary_must_start_a_line_in_preamble(tmp_path: Path) -> None:
    data = b"junk --bound\r\nnot a part\r\n--bound\r\n\r\nreal\r\n--bound--\r\n"
    parts = await parse(data, tmp_path, sizes=3)
    assert bodies(parts) == [b"real"]
    assert parts[0].headers == {} and parts[0].content_type is None


@pytest.mark.asyncio
async def test_part_without_headers_or_body(tmp_path: Path) -> None:
    parts = await parse(b"--bound\r\n\r\n--bound\r\n\r\nx\r\n--bound--\r\n", tmp_path, sizes=1)
    assert bodies(parts) == [b"", b"x"]


@pytest.mark.asyncio
async def test_large_preamble_and_epilogue_are_ignored(tmp_path: Path) -> None:
    data = b"p" * 100_000 + b"\r\n" + encode_multipart(B, [("a/b", b"x")]) + b"e" * 100_000
    parts = await parse(data, tmp_path, sizes=4096)
    assert bodies(parts) == [b"x"]


@pytest.mark.asyncio
async def test_preamble_is_capped(tmp_path: Path) -> None:
    junk = b"p" * (multipart.MAX_PREAMBLE_BYTES + 10)
    data = junk + b"\r\n" + encode_multipart(B, [("a/b", b"x")])
    await expect_error(data, tmp_path, "no opening boundary found in the first", sizes=65536)


@pytest.mark.asyncio
async def test_non_utf8_header_falls_back_to_latin1(tmp_path: Path) -> None:
    parts = await parse(b"--bound\r\nX-Name: caf\xe9\r\n\r\nx\r\n--bound--", tmp_path)
    assert parts[0].headers == {"x-name": "caf\u00e9"}


@pytest.mark.asyncio
async def test_empty_chunks_are_skipped(tmp_path: Path) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for byte in encode_multipart(B, [("a/b", b"xyz")]):
            yield b""
            yield bytes([byte])

    parts = await read_multipart(gen(), B, str(tmp_path))
    assert bodies(parts) == [b"xyz"]


@pytest.mark.asyncio
async def test_repeated_headers_are_combined(tmp_path: Path) -> None:
    data = b"--bound\r\nX-A: 1\r\nx-a: 2\r\n\r\nz\r\n--bound--"
    parts = await parse(data, tmp_path)
    assert parts[0].headers == {"x-a": "1, 2"}


# --------------------------------------------------------------------------- reader: errors


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no opening boundary"),
        (b"just some bytes without any delimiter", "no opening boundary"),
        (b"--boundX\r\n\r\nx\r\n--boundX--", "no opening boundary"),
        (b"--bound\r\nContent-Type: a/b\r\n\r\nbody without end", "truncated"),
        (b"--bound\r\nContent-Type: a/b\r\n\r\nbody\r\n--bound", "truncated"),
        (b"--bound\r\nContent-Type: a/b\r\n\r\nbody\r\n--bound\r\n", "truncated"),
        (b"--bound\r\nContent-Type: a/b\r\n", "truncated"),
        (b"--bound\r\nContent-Type: a/b\n\nbody\n--bound--\n", "truncated"),  # LF-only body end
        (b"--bound\r\nno colon here\r\n\r\nx\r\n--bound--", "malformed part header line"),
        (b"--bound\r\nbad name: x\r\n\r\nx\r\n--bound--", "malformed part header line"),
        (b"--bound\r\n: empty name\r\n\r\nx\r\n--bound--", "malformed part header line"),
        (b"--bound\r\n folded first\r\n\r\nx\r\n--bound--", "malformed part header line"),
        (b"--bound--\r\n", "no parts"),
        (b"--bound" + b" " * 2000 + b"\r\n\r\nx\r\n--bound--", "transport padding"),
    ],
)
async def test_malformed(data: bytes, reason: str, tmp_path: Path) -> None:
    await expect_error(data, tmp_path, reason)
    for size in (1, 5):
        with pytest.raises(MultipartError, match=reason):
            await parse(data, tmp_path, sizes=size)
        assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_header_block_too_large(tmp_path: Path) -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    await expect_error(b"--bound\r\n" + many + b"\r\nx\r\n--bound--", tmp_path, "header block larger")
    huge_line = b"X-Long: " + b"v" * 20_000
    await expect_error(
        b"--bound\r\n" + huge_line + b"\r\n\r\nx\r\n--bound--", tmp_path, "header block larger"
    )
    # Right at the limit is fine.
    line = b"X-Fit: " + b"v" * (multipart.MAX_HEADER_BYTES - 9) + b"\r\n"
    assert len(line) == multipart.MAX_HEADER_BYTES
    parts = await parse(b"--bound\r\n" + line + b"\r\nx\r\n--bound--", tmp_path, sizes=1000)
    assert bodies(parts) == [b"x"]


@pytest.mark.asyncio
async def test_max_part_size(tmp_path: Path) -> None:
    data = encode_multipart(B, [("a/b", b"12345"), ("a/b", b"123456")])
    await expect_error(data, tmp_path, "part 2 exceeds the maximum part size of 5", max_part_size=5)
    await expect_error(data, tmp_path, "exceeds", max_part_size=5, sizes=1)
    parts = await parse(data, tmp_path, max_part_size=6)
    assert [p.size for p in parts] == [5, 6]


@pytest.mark.asyncio
async def test_max_part_size_fails_early(tmp_path: Path) -> None:
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        yield b"--bound\r\n\r\n"
        while True:
            consumed += 65536
            yield b"z" * 65536

    with pytest.raises(MultipartError, match="exceeds"):
        await read_multipart(endless(), B, str(tmp_path), max_part_size=1_000_000)
    assert consumed < 2_000_000
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_max_parts(tmp_path: Path) -> None:
    data = encode_multipart(B, [("a/b", b"x")] * 4)
    await expect_error(data, tmp_path, "more than 3 parts", max_parts=3)
    assert len(await parse(data, tmp_path, max_parts=4)) == 4


@pytest.mark.asyncio
async def test_temp_files_removed_when_stream_fails(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield encode_multipart(B, [("a/b", b"x")] * 3)[:-20]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await read_multipart(broken(), B, str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_cleanup(tmp_path: Path) -> None:
    parts = await parse(encode_multipart(B, [("a/b", b"x"), ("a/b", b"y")]), tmp_path)
    assert len(os.listdir(tmp_path)) == 2
    cleanup(parts)
    cleanup(parts)  # idempotent
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_large_part_memory_bounded(tmp_path: Path) -> None:
    block = bytes(range(256)) * 256  # 64 KiB; never contains CR LF "--"
    count = 200 * 1024 * 1024 // len(block)

    async def stream() -> AsyncIterator[bytes]:
        yield b"--bound\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(count):
            yield block
        yield b"\r\n--bound\r\n\r\nsmall\r\n--bound--\r\n"

    tracemalloc.start()
    try:
        parts = await read_multipart(stream(), B, str(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, peak
    assert [p.size for p in parts] == [count * len(block), 5]
    assert head_and_tail(parts[0].path, len(block)) == (block, block)
    cleanup(parts)


def head_and_tail(path: str, n: int) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        head = f.read(n)
        f.seek(-n, os.SEEK_END)
        return head, f.read()


@pytest.mark.asyncio
async def test_with_starlette_request_stream(tmp_path: Path) -> None:
    async def stow(request: Request) -> JSONResponse:
        boundary = boundary_from_content_type(request.headers["content-type"])
        parts = await read_multipart(request.stream(), boundary, str(tmp_path))
        try:
            return JSONResponse([[p.content_type, p.size] for p in parts])
        finally:
            cleanup(parts)

    app = Starlette(routes=[Route("/studies", stow, methods=["POST"])])
    boundary = make_boundary("req")
    body = encode_multipart(boundary, [("application/dicom", b"a" * 100_000), ("application/dicom", b"")])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post(
            "/studies",
            content=body,
            headers={"content-type": multipart_content_type(boundary, "application/dicom")},
        )
    assert response.json() == [["application/dicom", 100_000], ["application/dicom", 0]]
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- writer


def test_exact_layout() -> None:
    body = encode_multipart(
        "b1", [("application/dicom", b"AB"), ("image/jp2", b"", {"Content-Location": "/x"})]
    )
    assert body == (
        b"--b1\r\nContent-Type: application/dicom\r\n\r\nAB\r\n"
        b"--b1\r\nContent-Type: image/jp2\r\nContent-Location: /x\r\n\r\n\r\n"
        b"--b1--\r\n"
    )


def test_streaming_pieces_match_encode() -> None:
    parts = [("application/dicom", b"one"), ("application/dicom", b"two")]
    trailing = b"".join(part_header("b", ct) + data + b"\r\n" for ct, data in parts) + closing("b")
    leading = (
        b"".join(part_header("b", ct, first=i == 0) + data for i, (ct, data) in enumerate(parts))
        + b"\r\n"
        + closing("b")
    )
    assert trailing == leading == encode_multipart("b", parts)


def test_multipart_length_matches() -> None:
    boundary = make_boundary(b"seed")
    parts = [
        ("application/dicom", b"x" * 1000),
        ('application/octet-stream; transfer-syntax="1.2.840.10008.1.2.1"', b""),
        ("image/jp2", b"\r\n--" + boundary.encode(), {"Content-Location": "/studies/1/frames/1"}),
    ]
    sized = [(p[0], len(p[1]), *p[2:]) for p in parts]
    assert multipart_length(boundary, sized) == len(encode_multipart(boundary, parts))
    assert multipart_length(boundary, []) == len(encode_multipart(boundary, [])) == len(closing(boundary))


def test_make_boundary_deterministic() -> None:
    assert make_boundary("abc") == make_boundary(b"abc")
    assert make_boundary("abc") != make_boundary("abd")
    boundary = make_boundary("/studies/1.2.3")
    assert 1 <= len(boundary) <= 70
    assert boundary_from_content_type(multipart_content_type(boundary, "application/dicom")) == boundary


def test_multipart_content_type() -> None:
    assert multipart_content_type("abc", "application/dicom") == (
        'multipart/related; type="application/dicom"; boundary=abc'
    )
    assert multipart_content_type("a b", "application/octet-stream", "1.2.840.10008.1.2.1") == (
        'multipart/related; type="application/octet-stream"; '
        'transfer-syntax=1.2.840.10008.1.2.1; boundary="a b"'
    )


def test_header_injection_rejected() -> None:
    with pytest.raises(ValueError):
        part_header("b", "application/dicom\r\nX-Evil: 1")
    with pytest.raises(ValueError):
        part_header("b", "application/dicom", {"Content-Location": "/x\n"})


@pytest.mark.asyncio
async def test_round_trip(tmp_path: Path) -> None:
    rng = random.Random(5)
    boundary = make_boundary("round-trip")
    payloads = [rng.randbytes(rng.randint(0, 300_000)) for _ in range(5)]
    parts = [("application/dicom", p, {"Content-Location": f"/i/{i}"}) for i, p in enumerate(payloads)]
    data = encode_multipart(boundary, parts)
    sizes = [rng.randint(1, 70_000) for _ in range(len(data))]
    read = await read_multipart(chunked(data, sizes), boundary, str(tmp_path))
    assert bodies(read) == payloads
    assert [p.headers for p in read] == [
        {"content-type": "application/dicom", "content-location": f"/i/{i}"} for i in range(5)
    ]
    cleanup(read)


@pytest.mark.asyncio
async def test_each_part_is_handed_over_as_soon_as_it_is_complete(tmp_path: Path) -> None:
    payloads = [b"a" * 1000, b"b" * 200_000, b"c" * 10]
    data = encode_multipart(B, [("application/dicom", p, {}) for p in payloads])
    seen: list[tuple[int, int]] = []  # (part size, body bytes consumed so far) at each hand-over
    consumed = 0

    async def stream():
        nonlocal consumed
        for i in range(0, len(data), 4096):
            consumed = i + 4096
            yield data[i : i + 4096]

    parts = await read_multipart(
        stream(), B, str(tmp_path), on_part=lambda p: seen.append((p.size, consumed))
    )
    assert [size for size, _ in seen] == [len(p) for p in payloads]
    # The first part was handed over long before the body ended.
    assert seen[0][1] < len(data) // 2
    cleanup(parts)
