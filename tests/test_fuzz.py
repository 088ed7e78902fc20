"""Property-based fuzzing (Hypothesis) of the parsers that face the network: Accept headers, QIDO parameters
(parsed and run against a real SQLite index), multipart bodies, DICOM files and the codestream cutter on
corrupted masters. Each must answer or refuse with its own error type: nothing else escapes, nothing hangs
(every example has a deadline). Examples are few and derandomized, so the module runs in well under a minute
and a failure reproduces; no example database is written into the checkout."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb.accept import parse_accept
from dicomweb.multipart import MultipartError, boundary_from_content_type, read_multipart
from storage.codec.cutter import CutError, cut
from storage.dicom_file import InvalidInstance, parse_instance
from storage.index import Index
from storage.query import QueryError, parse_query, run_query
from tests.conftest import PYDICOM_TEST_FILES, new_uids

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CT = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Its own loop: every example runs on it, and the index's connections stay with it.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# ---- Accept ------------------------------------------------------------------------------------------

ACCEPT_PIECES = st.sampled_from(
    [
        "multipart/related",
        "application/dicom",
        "image/jp2",
        "image/jphc",
        "*/*",
        "application/octet-stream",
        ";",
        ",",
        "=",
        '"',
        "type=",
        "transfer-syntax=",
        "q=",
        "0.5",
        "1e400",
        "nan",
        "*",
        " ",
        "\\",
        "undefined",
        "1.2.840.10008.1.2.4.202",
        "\xff",
        "\x00",
    ]
)


@FUZZ
@given(
    st.one_of(st.text(max_size=200), st.lists(ACCEPT_PIECES, max_size=30).map("".join)),
    st.lists(st.text(max_size=40), max_size=3),
)
def test_accept(header: str, query: list[str]) -> None:
    for media_range in parse_accept(header, query):
        assert 0 <= media_range.q <= 1


# ---- QIDO parameters, run against a real index ------------------------------------------------------


@pytest.fixture(scope="module")
def index(loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    folder = tmp_path_factory.mktemp("fuzz-index")
    path = folder / "ct.dcm"
    path.write_bytes(new_uids(CT))
    idx = Index(f"sqlite+aiosqlite:///{folder / 'index.sqlite'}")
    loop.run_until_complete(idx.create())
    loop.run_until_complete(idx.store([(parse_instance(path), "blob", path.stat().st_size)]))
    yield idx
    loop.run_until_complete(idx.close())


KEYS = st.sampled_from(
    [
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "Modality",
        "ModalitiesInStudy",
        "SeriesNumber",
        "InstanceNumber",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "AccessionNumber",
        "Rows",
        "BodyPartExamined",
        "00100010",
        "0020000D",
        "00400275.00401001",
        "limit",
        "offset",
        "includefield",
        "fuzzymatching",
        "StudyDescription",
        "PatientBirthDate",
        "SOPClassesInStudy",
    ]
)
VALUE_PIECES = st.sampled_from(
    [
        "*",
        "?",
        "-",
        ",",
        "\\",
        "^",
        "1",
        "2020",
        "0101",
        "1.2.3",
        "CT",
        "true",
        "all",
        " ",
        "%",
        "_",
        "'",
        "18446744073709551616",
        "-1",
        "\x00",
        "é",
        "=",
    ]
)
VALUES = st.one_of(st.text(max_size=40), st.lists(VALUE_PIECES, max_size=12).map("".join))


@FUZZ
@given(
    st.sampled_from(["study", "series", "instance"]),
    st.lists(st.tuples(st.one_of(KEYS, st.text(max_size=12)), VALUES), max_size=6),
)
def test_qido_parameters(loop: asyncio.AbstractEventLoop, index: Index, level: str, params) -> None:
    try:
        query = parse_query(level, params)  # type: ignore[arg-type]
    except QueryError:
        return
    results, remaining = loop.run_until_complete(run_query(index, query))
    assert remaining >= 0 and isinstance(results, list)


# ---- multipart ---------------------------------------------------------------------------------------

BOUNDARY = "fuzz-boundary"
BODY_PIECES = st.sampled_from(
    [
        b"--fuzz-boundary",
        b"--fuzz-boundary--",
        b"\r\n",
        b"\n",
        b"Content-Type: application/dicom",
        b"Content-Type:",
        b": ",
        b"\r\n\r\n",
        b"DICM",
        b"--",
        b"-",
        b"\x00" * 8,
        b"\xff",
        b" \t",
        b"Content-Length: 5",
    ]
)


async def _chunks(body: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for at in sorted(c % (len(body) + 1) for c in cuts):
        yield body[start:at]
        start = max(start, at)
    yield body[start:]


@FUZZ
@given(
    st.one_of(st.binary(max_size=400), st.lists(BODY_PIECES, max_size=40).map(b"".join)),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=5),
)
def test_multipart(loop: asyncio.AbstractEventLoop, body: bytes, cuts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        try:
            parts = loop.run_until_complete(
                read_multipart(_chunks(body, cuts), BOUNDARY, tmpdir, max_part_size=1000, max_parts=20)
            )
        except MultipartError:
            assert not list(Path(tmpdir).iterdir())  # a refused body leaves no file behind
            return
        assert 1 <= len(parts) <= 20
        assert all(p.size <= 1000 and Path(p.path).stat().st_size == p.size for p in parts)


@FUZZ
@given(st.text(max_size=120))
def test_multipart_content_type(content_type: str) -> None:
    with contextlib.suppress(MultipartError):
        boundary_from_content_type(content_type)


# ---- DICOM files -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's notes on the damage it reads past
@FUZZ
@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=len(CT) - 1), st.integers(0, 255)), max_size=12),
    st.integers(min_value=0, max_value=len(CT)),
)
def test_dicom_parsing(changes: list[tuple[int, int]], keep: int) -> None:
    data = bytearray(CT)
    for at, value in changes:
        data[at] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.dcm"
        path.write_bytes(bytes(data[: max(keep, 132)] if keep < len(CT) // 2 else data))
        try:
            parsed = parse_instance(path)
        except InvalidInstance:
            return
        assert parsed.sop_uid


# ---- the cutter on a corrupted master ----------------------------------------------------------------


@pytest.fixture(scope="module")
def master() -> bytes:
    from storage.codec import encode_master
    from storage.codec_check import _sample

    return encode_master(_sample(), bits_stored=12, signed=True, color=False)


@FUZZ
@given(st.data())
def test_cutter_on_corrupted_master(master: bytes, data: st.DataObject) -> None:
    corrupted = bytearray(master)
    # Mostly the headers (SIZ, COD, QCD, PLT, TLM, SOT): where a bad length or count would do harm.
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, min(len(master) - 1, 400)) | st.integers(0, len(master) - 1))
        corrupted[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        corrupted = corrupted[: data.draw(st.integers(0, len(corrupted)))]
    layers = data.draw(st.none() | st.integers(-1, 12))
    drop = data.draw(st.integers(-1, 6))
    try:
        out = cut(bytes(corrupted), layers=layers, drop_levels=drop)
    except CutError:
        return
    assert len(out) <= len(corrupted) + 4096
