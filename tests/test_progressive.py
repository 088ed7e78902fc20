"""Progressive retrieval from layered masters: layers/fsiz cuts, media types, Range, ETag, /layers."""

from __future__ import annotations

import io
import math
import time

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from storage.codec import decode, decode_htj2k, info
from tests.conftest import PYDICOM_DATA, new_uids, parse_multipart, stow

WG04 = ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm"]
JP2 = {"Accept": "image/jp2"}


class Stored:
    def __init__(self, client: httpx.Client, name: str) -> None:
        data = new_uids((PYDICOM_DATA / name).read_bytes(), study=generate_uid())
        self.ds = pydicom.dcmread(io.BytesIO(data))
        assert stow(client, [data]).status_code == 200
        self.url = (
            f"/studies/{self.ds.StudyInstanceUID}/series/{self.ds.SeriesInstanceUID}"
            f"/instances/{self.ds.SOPInstanceUID}"
        )
        deadline = time.time() + 120
        while (r := client.get(self.url + "/layers")).status_code == 503 and time.time() < deadline:
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        self.layers = r.json()["frames"][0]
        self.pixels = self.ds.pixel_array


@pytest.fixture(scope="module", params=WG04)
def stored(request: pytest.FixtureRequest, client: httpx.Client) -> Stored:
    return Stored(client, request.param)


def frame(
    client: httpx.Client, stored: Stored, headers: dict[str, str] = JP2, **params: str
) -> httpx.Response:
    return client.get(stored.url + "/frames/1", params=params, headers=headers)


def test_layers_description(stored: Stored) -> None:
    desc = stored.layers
    rows, cols = stored.pixels.shape[:2]
    assert (desc["number"], desc["rows"], desc["columns"]) == (1, rows, cols)
    assert desc["levels"][0] == {"rows": rows, "columns": cols}
    assert max(desc["levels"][-1].values()) <= 64
    sizes = [step["bytes"] for step in desc["layers"]]
    assert sizes == sorted(sizes) and len(sizes) >= 5
    assert desc["layers"][-1]["lossless"] and desc["layers"][-1]["psnr"] is None
    assert not any(step["lossless"] for step in desc["layers"][:1])


def test_no_parameters_give_the_master(client: httpx.Client, stored: Stored) -> None:
    whole = frame(client, stored)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    stored_form = parse_multipart(
        client.get(stored.url + "/frames/1", headers={"Accept": "multipart/related; type=image/jp2"})
    )[0][1]
    assert whole.content == stored_form
    all_layers = frame(client, stored, layers=str(len(stored.layers["layers"])))
    assert all_layers.content == whole.content
    assert np.array_equal(decode(whole.content), stored.pixels)


def test_every_layer_and_level_combination(client: httpx.Client, stored: Stored) -> None:
    rows, cols = stored.pixels.shape[:2]
    nlayers = len(stored.layers["layers"])
    previous_by_level: dict[int, int] = {}
    for drop, level in enumerate(stored.layers["levels"]):
        last_size = 0
        for layers in range(1, nlayers + 1):
            r = frame(client, stored, layers=str(layers), fsiz=f"{level['columns']},{level['rows']}")
            assert r.status_code == 200, r.text
            whole = layers == nlayers and drop == 0
            ts = "1.2.840.10008.1.2.4.90" if whole else "1.2.840.10008.1.2.4.91"
            assert r.headers["content-type"] == f"image/jp2; transfer-syntax={ts}"
            assert int(r.headers["content-length"]) == len(r.content)
            head = info(r.content)
            assert (head.width, head.height) == (math.ceil(cols / 2**drop), math.ceil(rows / 2**drop))
            assert len(r.content) >= last_size, "sizes grow with layers"
            last_size = len(r.content)
            image = decode(r.content)
            assert image.shape[:2] == (head.height, head.width)
            if drop == 0:
                step = stored.layers["layers"][layers - 1]
                err = np.abs(image.astype(np.int64) - stored.pixels.astype(np.int64)).max()
                assert err == step["max_error"], "fidelity as described by /layers"
                assert (err == 0) == step["lossless"]
        if drop:
            assert last_size <= previous_by_level[drop - 1], "sizes shrink with dropped levels"
        previous_by_level[drop] = last_size


def test_fsiz_picks_the_smallest_level_at_least_that_big(client: httpx.Client, stored: Stored) -> None:
    rows, cols = stored.pixels.shape[:2]
    head = info(frame(client, stored, fsiz="256,256").content)
    assert head.width >= min(256, cols) and head.height >= min(256, rows)
    assert math.ceil(head.width / 2) < 256 or math.ceil(head.height / 2) < 256 or head.levels == 0
    assert (
        info(frame(client, stored, fsiz="100000,100000").content).width
    ) == cols  # none smaller: full size


def test_htj2k_rpcl_with_exact_part_header(client: httpx.Client, stored: Stored) -> None:
    accept = "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"
    r = client.get(stored.url + "/frames/1", headers={"Accept": accept})
    assert r.status_code == 200
    assert b"\r\nContent-Type: image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202\r\n\r\n" in r.content
    assert int(r.headers["content-length"]) == len(r.content)
    ((_, body),) = parse_multipart(r)
    head = info(body)
    assert head.htj2k and head.tlm and head.progression == "RPCL"
    assert np.array_equal(decode_htj2k(body).reshape(stored.pixels.shape), stored.pixels)
    again = client.get(stored.url + "/frames/1", headers={"Accept": accept})
    assert again.content == r.content, "identical bytes, from the cache"
    small = client.get(stored.url + "/frames/1", params={"fsiz": "128,128"}, headers={"Accept": "image/jphc"})
    assert small.headers["content-type"] == "image/jphc; transfer-syntax=1.2.840.10008.1.2.4.203"
    assert info(small.content).width < stored.pixels.shape[1]


def test_range_pieces_reassemble(client: httpx.Client, stored: Stored) -> None:
    whole = frame(client, stored, layers="2").content
    first = frame(client, stored, {**JP2, "Range": "bytes=0-999"}, layers="2")
    rest = frame(client, stored, {**JP2, "Range": "bytes=1000-"}, layers="2")
    assert first.status_code == rest.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-999/{len(whole)}"
    assert first.content + rest.content == whole
    bad = frame(client, stored, {**JP2, "Range": f"bytes={len(whole) + 10}-"}, layers="2")
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(whole)}"


def test_etag_and_304(client: httpx.Client, stored: Stored) -> None:
    r = frame(client, stored, layers="1")
    etag = r.headers["etag"]
    assert frame(client, stored, {**JP2, "If-None-Match": etag}, layers="1").status_code == 304
    other = frame(client, stored, layers="2")
    assert other.headers["etag"] != etag
    multi = client.get(
        stored.url + "/frames/1",
        params={"layers": "1"},
        headers={"Accept": "multipart/related; type=image/jp2"},
    )
    again = client.get(
        stored.url + "/frames/1",
        params={"layers": "1"},
        headers={"Accept": "multipart/related; type=image/jp2"},
    )
    assert multi.content == again.content and multi.headers["etag"] == again.headers["etag"]


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jp2"',
        "multipart/related; type=image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91",
        'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
        "multipart/related; type=application/octet-stream; transfer-syntax=*; transfer-syntax=*",
        "undefined",
        "image/jp2",
    ],
)
def test_accept_variants_with_a_cut(client: httpx.Client, stored: Stored, accept: str) -> None:
    r = client.get(
        stored.url + "/frames/1", params={"layers": "1", "fsiz": "64,64"}, headers={"Accept": accept}
    )
    if accept == "undefined":
        # The default is uncompressed, which a cut cannot be.
        assert r.status_code == 406 and "cut" in r.json()["error"]
        return
    assert r.status_code == 200, r.text
    body = parse_multipart(r)[0][1] if accept.startswith("multipart") else r.content
    assert info(body).width < stored.pixels.shape[1] or stored.pixels.shape[1] <= 64


def test_accept_query_parameter(client: httpx.Client, stored: Stored) -> None:
    r = client.get(stored.url + "/frames/1", params={"layers": "1", "accept": "image/jp2"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/jp2")


def test_bad_parameters(client: httpx.Client, stored: Stored) -> None:
    for params in ({"layers": "0"}, {"layers": "x"}, {"fsiz": "10"}, {"fsiz": "a,b"}, {"fsiz": "0,5"}):
        assert frame(client, stored, **params).status_code == 400
    r = client.get(
        stored.url + "/frames/1", params={"layers": "1"}, headers={"Accept": "application/octet-stream"}
    )
    assert r.status_code == 406


def test_bulk_data_range_and_etag(client: httpx.Client, stored: Stored) -> None:
    meta = client.get(stored.url + "/metadata").json()[0]
    uri = meta["7FE00010"]["BulkDataURI"]
    accept = {"Accept": "application/octet-stream"}
    whole = client.get(uri, headers=accept)
    assert whole.status_code == 200 and len(whole.content) == stored.pixels.nbytes
    head = client.get(uri, headers={**accept, "Range": "bytes=0-65535"})
    tail = client.get(uri, headers={**accept, "Range": "bytes=65536-"})
    assert head.status_code == tail.status_code == 206
    assert head.content + tail.content == whole.content
    assert client.get(uri, headers={**accept, "If-None-Match": whole.headers["etag"]}).status_code == 304


# ---- whole frames end with EOC -------------------------------------------------------------------------

EOC = b"\xff\xd9"
STORED_DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def stored_fragments(client: httpx.Client, url: str) -> list[bytes]:
    """Each frame's fragment in the stored master file, pad byte included (PS3.5 A.4)."""
    [(_headers, body)] = parse_multipart(client.get(url, headers=STORED_DICOM))
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


@pytest.fixture(scope="module")
def masters(client: httpx.Client) -> list[Stored]:
    """Images whose master codestreams include odd lengths, i.e. fragments with a pad byte."""
    return [Stored(client, name) for name in (*WG04, "emri_small.dcm", "RG1_UNCR.dcm")]


def test_whole_master_frames_end_with_eoc(client: httpx.Client, masters: list[Stored]) -> None:
    """ISO 15444-1 A.4.4: EOC ends the codestream. The fragment's pad byte is not part of it, in single-part
    and multipart answers, whole (`image/jp2`, `.90`) or as stored (`transfer-syntax=*`)."""
    padded = 0
    for image in masters:
        for number, fragment in enumerate(stored_fragments(client, image.url), start=1):
            codestream = fragment[:-1] if fragment.endswith(EOC + b"\x00") else fragment
            padded += codestream != fragment
            assert codestream.endswith(EOC)
            url = f"{image.url}/frames/{number}"
            single = client.get(url, headers=JP2)
            assert single.status_code == 200
            assert single.headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
            assert single.content == codestream
            assert int(single.headers["content-length"]) == len(codestream)
            for accept in (
                "multipart/related; type=image/jp2",
                'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            ):
                [(headers, body)] = parse_multipart(client.get(url, headers={"Accept": accept}))
                assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
                assert body == codestream
    assert padded, "no master fragment had a pad byte: the test shows nothing"


def test_whole_frame_range_and_etag_agree_without_the_pad(
    client: httpx.Client, masters: list[Stored]
) -> None:
    for image in masters:
        whole = client.get(image.url + "/frames/1", headers=JP2)
        size = len(whole.content)
        assert whole.content.endswith(EOC)
        tail = client.get(image.url + "/frames/1", headers={**JP2, "Range": "bytes=-2"})
        assert tail.status_code == 206
        assert tail.content == EOC
        assert tail.headers["content-range"] == f"bytes {size - 2}-{size - 1}/{size}"
        assert (
            client.get(image.url + "/frames/1", headers={**JP2, "Range": f"bytes={size}-"}).status_code == 416
        )
        pieces = [
            client.get(image.url + "/frames/1", headers={**JP2, "Range": r}).content
            for r in ("bytes=0-999", "bytes=1000-")
        ]
        assert b"".join(pieces) == whole.content
        again = client.get(image.url + "/frames/1", headers={**JP2, "If-None-Match": whole.headers["etag"]})
        assert again.status_code == 304
