"""Preview layer counts chosen from the fidelity ladder (storage/preview.py): `layers=preview`, `/layers`'
preview_layers, and a series' recommended count (`/series/{se}/layers`)."""

from __future__ import annotations

import time

import httpx
import pytest
from pydicom.uid import generate_uid

from storage.preview import preview_layers
from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, new_uids, parse_multipart, stow

OHIF_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
# What the rule gives for the WG04 masters (storage/preview.py's table).
EXPECTED = {"693_UNCR.dcm": 2, "MR2_UNCR.dcm": 3, "RG3_UNCR.dcm": 2, "US1_UNCR.dcm": 2}


def step(layers: int, fraction: float, psnr: float | None, total: int = 1000) -> dict[str, object]:
    return {"layers": layers, "bytes": int(fraction * total), "psnr": psnr, "lossless": psnr is None}


def test_rule() -> None:
    ct = [
        step(1, 0.027, 46.1),
        step(2, 0.136, 65.3),
        step(3, 0.271, 75.9),
        step(4, 0.541, 83.1),
        step(5, 1, None),
        step(6, 1, None),
    ]
    assert preview_layers(ct) == 2  # the fewest layers reaching 60 dB within a fifth of the bytes
    cr = [
        step(1, 0.010, 45.4),
        step(2, 0.049, 48.4),
        step(3, 0.098, 50.8),
        step(4, 0.197, 55.7),
        step(5, 0.393, 66.5),
        step(6, 1, None),
    ]
    assert preview_layers(cr) == 4  # 60 dB is out of budget: the most layers within it
    assert preview_layers([step(1, 0.5, 40.0), step(2, 1, None)]) == 1  # at least one layer
    assert preview_layers([step(1, 1, None), step(2, 1, None)]) is None  # lossless at once: no preview


def stored_instance(client: httpx.Client, data: bytes) -> str:
    r = stow(client, [data])
    assert r.status_code == 200, r.text
    return r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]


def wait_for_master(client: httpx.Client, url: str) -> dict:
    deadline = time.time() + 120
    while (r := client.get(url + "/layers")).status_code == 503 and time.time() < deadline:
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layers_preview_is_the_cut_the_rule_picks(client: httpx.Client, name: str) -> None:
    url = stored_instance(client, new_uids((PYDICOM_DATA / name).read_bytes()))
    ladder = wait_for_master(client, url)
    assert ladder["preview_layers"] == EXPECTED[name] == preview_layers(ladder["frames"][0]["layers"])
    n = ladder["preview_layers"]
    preview = client.get(url + "/frames/1", params={"layers": "preview"}, headers={"Accept": "image/jp2"})
    numbered = client.get(url + "/frames/1", params={"layers": str(n)}, headers={"Accept": "image/jp2"})
    assert preview.status_code == numbered.status_code == 200
    assert preview.headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert preview.content == numbered.content and preview.headers["etag"] == numbered.headers["etag"]
    assert len(preview.content) == ladder["frames"][0]["layers"][n - 1]["bytes"]
    # OHIF's own Accept (transfer-syntax=*) gets the cut, in a multipart body.
    ohif = client.get(url + "/frames/1?layers=preview", headers=OHIF_ACCEPT)
    assert ohif.status_code == 200
    [(headers, body)] = parse_multipart(ohif)
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert body == numbered.content


def test_series_recommendation(client: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    raw = (PYDICOM_DATA / "693_UNCR.dcm").read_bytes()
    urls = [
        stored_instance(client, new_uids(raw, study=study, series=series, InstanceNumber=str(i)))
        for i in (1, 2)
    ]
    for url in urls:
        wait_for_master(client, url)
    r = client.get(f"/studies/{study}/series/{series}/layers")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["preview_layers"] == 2
    assert body["rule"]["min_psnr_db"] == 60 and body["rule"]["max_bytes_fraction"] == 0.2
    assert [i["preview_layers"] for i in body["instances"]] == [2, 2]
    assert all(i["master"] for i in body["instances"])
    assert client.get(f"/studies/{study}/series/{generate_uid()}/layers").status_code == 404


def test_preview_without_a_master_is_the_frame_as_stored(client: httpx.Client) -> None:
    """A lossy original (JPEG baseline) has no layers: OHIF's first stage still gets an answer, 200."""
    url = stored_instance(client, new_uids((PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes()))
    r = client.get(url + "/frames/1?layers=preview", headers=OHIF_ACCEPT)
    assert r.status_code == 200, r.text
    [(headers, _)] = parse_multipart(r)
    assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    series = url.split("/instances/")[0]
    body = client.get(series + "/layers").json()
    assert body["preview_layers"] is None and body["instances"][0]["master"] is False


def test_malformed_layers(client: httpx.Client) -> None:
    url = stored_instance(client, new_uids((PYDICOM_DATA / "693_UNCR.dcm").read_bytes()))
    r = client.get(url + "/frames/1?layers=previews", headers={"Accept": "image/jp2"})
    assert r.status_code == 400 and "preview" in r.json()["error"]
