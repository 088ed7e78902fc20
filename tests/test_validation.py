"""What others will check: stored masters, cuts and HTJ2K frames, validated and decoded with tools that are
not this server's, on the WG04 images (pydicom-data) and pydicom's own.

- `dciodvfy` (Debian dicom3tools) validates each master against its IOD; `gdcminfo` (Debian libgdcm-tools)
  reads it, checks its codestreams are lossless, and reports its findings. Both run on the input too, and
  only findings the input did not already have count: the server is not asked to repair its inputs.
- `gdcmconv --raw` (GDCM's own JPEG 2000 path) and `opj_decompress` (Debian libopenjp2-tools, a build of
  OpenJPEG other than the one the server loads) decode masters, cuts and HTJ2K frames; lossless ones must give
  exactly the pixels pydicom decodes from the input, cuts exactly what `opj_decompress -r D -l L` gives from
  the whole master.
- `jpylyzer` (PyPI) validates every codestream sent: whole masters and cuts as J2C, HTJ2K frames as JHC.

A missing tool fails the tests with the package to install; nothing is skipped.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import new_uids, parse_multipart, stow, wait_for_masters
from tests.samples import sample

# Debian packages of the command-line tools; jpylyzer comes from PyPI (the test extras) and runs as
# `python -m jpylyzer`, whatever PATH holds.
TOOLS = {
    "dciodvfy": "dicom3tools",
    "gdcminfo": "libgdcm-tools",
    "gdcmconv": "libgdcm-tools",
    "opj_decompress": "libopenjp2-tools",
}
# WG04 images (uncompressed and reference lossless JPEG 2000, colour included) and pydicom's: RLE, JPEG
# Lossless, JPEG-LS lossless, multi-frame, palette (plain and segmented), overlays, planar RGB, 16-bit RGB.
IMAGES = [
    "693_UNCR.dcm",
    "693_J2KR.dcm",
    "MR2_UNCR.dcm",
    "RG3_UNCR.dcm",
    "US1_UNCR.dcm",
    "US1_J2KR.dcm",
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "JPEG-LL.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "OBXXXX1A.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "color-pl.dcm",
    "SC_rgb_rle_16bit.dcm",
]
STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
J2K_WHOLE, J2K_CUT = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
HT_WHOLE, HT_CUT = "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"


def tool(name: str) -> list[str]:
    """The command that runs `name`; fails with what to install when it is missing."""
    if name == "jpylyzer":
        assert importlib.util.find_spec("jpylyzer"), "jpylyzer is not installed: pip install -e '.[test]'"
        return [sys.executable, "-m", "jpylyzer"]
    path = shutil.which(name)
    assert path, (
        f"{name} is not installed: apt-get install {TOOLS[name]} (see the README's test dependencies)"
    )
    return [path]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tool(str(args[0])), *map(str, args[1:])], capture_output=True, text=True, timeout=300, check=False
    )


# ---- findings of the DICOM validators --------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's "Error - ..." lines (its warnings are advice: not counted)."""
    done = run("dciodvfy", path)
    return {line.strip() for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def gdcm_findings(path: Path) -> tuple[set[str], str]:
    """gdcminfo's Error/Warning lines (source line numbers left out) and its verdict on the codestreams."""
    done = run("gdcminfo", "--check-compression", "-E", "-W", path)
    assert done.returncode == 0, f"gdcminfo cannot read {path.name}: {done.stdout}{done.stderr}"
    out = done.stdout + done.stderr
    findings = {
        re.sub(r", line \d+", "", line) for line in out.splitlines() if line.startswith(("Error", "Warning"))
    }
    verdict = re.search(r"Encapsulated Stream was found to be: (\w+)", out)
    return findings, verdict.group(1) if verdict else ""


# ---- decoders other than the server's --------------------------------------------------------------------

_COMPONENT = re.compile(r"Component (\d+) characteristics: (\d+)x(\d+)x(\d+) (signed|unsigned)")


def opj_decode(codestream: bytes, work: Path, *, reduce: int = 0, layers: int = 0) -> np.ndarray:
    """opj_decompress's output as (rows, cols) or (rows, cols, components). Its .rawl files hold each
    component in turn, little endian, 1 byte per sample up to 8 bits and 2 above, each value masked to
    its precision (signed values are not sign-extended: that is done here)."""
    source, target = work / "in.j2c", work / "out.rawl"
    source.write_bytes(codestream)
    target.unlink(missing_ok=True)
    args = ["opj_decompress", "-i", source, "-o", target, "-r", str(reduce)]
    if layers:
        args += ["-l", str(layers)]
    done = run(*args)
    assert done.returncode == 0 and target.exists(), done.stdout + done.stderr
    components = _COMPONENT.findall(done.stdout)
    assert components, done.stdout
    data, planes, offset = target.read_bytes(), [], 0
    for _index, width, height, precision, sign in components:
        bits = int(precision)
        dtype = np.dtype("<u1" if bits <= 8 else "<u2")
        count = int(width) * int(height)
        values = np.frombuffer(data, dtype, count, offset).astype(np.int32) & ((1 << bits) - 1)
        if sign == "signed":
            values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
        planes.append(values.reshape(int(height), int(width)))
        offset += count * dtype.itemsize
    assert offset == len(data)
    return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)


def gdcm_decode(path: Path, work: Path) -> np.ndarray:
    raw = work / "gdcm-raw.dcm"
    done = run("gdcmconv", "--raw", path, raw)
    assert done.returncode == 0, done.stdout + done.stderr
    ds = pydicom.dcmread(raw)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    return ds.pixel_array


def jpylyzer_failures(codestream: bytes, work: Path, fmt: str) -> list[str]:
    """The tests jpylyzer failed on a raw codestream (`fmt` j2c, or jhc for HTJ2K); empty when valid."""
    path = work / f"codestream.{fmt}"
    path.write_bytes(codestream)
    done = run("jpylyzer", "--format", fmt, path)
    assert done.returncode == 0, done.stderr
    if f'<isValid format="{fmt}">True</isValid>' in done.stdout:
        return []
    tests = done.stdout.split("<tests>", 1)[-1].split("</tests>", 1)[0]
    return re.findall(r"<(\w+)>False</\1>", tests) or [done.stdout[-2000:]]


# ---- the images, stored once ------------------------------------------------------------------------------


@dataclass
class Stored:
    name: str
    input_path: Path  # the file as sent (new UIDs)
    master_path: Path  # the file as stored, retrieved with transfer-syntax=*
    url: str
    frames: int

    def original(self, number: int) -> np.ndarray:
        pixels = pydicom.dcmread(self.input_path).pixel_array  # pydicom's decoders, not the server's
        return pixels[number - 1] if self.frames > 1 else pixels


@pytest.fixture(scope="module")
def stored(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stored]:
    for name in (*TOOLS, "jpylyzer"):
        tool(name)
    work = tmp_path_factory.mktemp("validation")
    study = generate_uid()
    out: dict[str, Stored] = {}
    for name in IMAGES:
        data = new_uids(sample(name).read_bytes(), study=study)
        ds = pydicom.dcmread(io.BytesIO(data))
        url = f"/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        (work / f"in-{name}").write_bytes(data)
        out[name] = Stored(
            name, work / f"in-{name}", work / f"master-{name}", url, int(ds.get("NumberOfFrames", 1) or 1)
        )
    response = stow(client, [p.input_path.read_bytes() for p in out.values()])
    assert response.status_code == 200, response.text
    wait_for_masters(client)
    for image in out.values():
        [(headers, body)] = parse_multipart(client.get(image.url, headers=STORED))
        assert headers["content-type"] == f"application/dicom; transfer-syntax={J2K_WHOLE}", (
            image.name,
            headers,
        )
        image.master_path.write_bytes(body)
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def frame(client: httpx.Client, image: Stored, number: int, accept: str, **params: str) -> tuple[bytes, str]:
    response = client.get(f"{image.url}/frames/{number}", params=params, headers={"Accept": accept})
    assert response.status_code == 200, (image.name, number, params, response.text)
    return response.content, response.headers["content-type"].split("transfer-syntax=")[-1]


# ---- masters: DICOM validators
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_dciodvfy_finds_no_new_error_in_the_master(stored: dict[str, Stored], name: str) -> None:
    image = stored[name]
    new = dciodvfy_errors(image.master_path) - dciodvfy_errors(image.input_path)
    assert not new, f"dciodvfy errors in the master of {name} that its input did not have: {sorted(new)}"


@pytest.mark.parametrize("name", IMAGES)
def test_gdcm_reads_the_master_as_lossless_with_no_new_finding(stored: dict[str, Stored], name: str) -> None:
    image = stored[name]
    before, _ = gdcm_findings(image.input_path)
    after, verdict = gdcm_findings(image.master_path)
    assert verdict == "lossless", f"gdcminfo --check-compression says {verdict!r} for the master of {name}"
    assert not after - before, f"new gdcminfo findings for {name}: {sorted(after - before)}"


@pytest.mark.parametrize("name", IMAGES)
def test_gdcm_decodes_the_master_to_the_original_pixels(
    stored: dict[str, Stored], name: str, work: Path
) -> None:
    image = stored[name]
    decoded = gdcm_decode(image.master_path, work)
    original = pydicom.dcmread(image.input_path).pixel_array
    assert decoded.shape == original.shape and np.array_equal(decoded, original), name


# ---- frames: whole, cut and HTJ2K -----------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_whole_frames_are_valid_and_decode_to_the_original(
    client: httpx.Client, stored: dict[str, Stored], name: str, work: Path
) -> None:
    image = stored[name]
    for number in range(1, image.frames + 1):
        codestream, ts = frame(client, image, number, "image/jp2")
        assert ts == J2K_WHOLE
        assert codestream.endswith(b"\xff\xd9"), "a codestream ends with EOC (ISO 15444-1 A.4.4)"
        assert not (failed := jpylyzer_failures(codestream, work, "j2c")), (name, number, failed)
        assert np.array_equal(opj_decode(codestream, work), image.original(number)), (name, number)


def cut_requests(levels: list[dict[str, int]], layers: int) -> list[tuple[int, int, dict[str, str]]]:
    """(layers kept, levels dropped, query) for the first layer, a middle one, and a few resolutions."""
    out = []
    for drop in sorted({0, 1, len(levels) // 2, len(levels) - 1}):
        level = levels[drop]
        for kept in sorted({1, max(1, layers // 2), layers}):
            if drop == 0 and kept == layers:
                continue  # the whole master, tested above
            out.append((kept, drop, {"layers": str(kept), "fsiz": f"{level['columns']},{level['rows']}"}))
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_cuts_are_valid_and_decode_like_the_master_reduced(
    client: httpx.Client, stored: dict[str, Stored], name: str, work: Path
) -> None:
    image = stored[name]
    ladder = client.get(image.url + "/layers").json()["frames"][0]
    whole, _ = frame(client, image, 1, "image/jp2")
    for kept, drop, params in cut_requests(ladder["levels"], len(ladder["layers"])):
        codestream, ts = frame(client, image, 1, "image/jp2", **params)
        assert ts == J2K_CUT
        assert codestream.endswith(b"\xff\xd9")
        assert not (failed := jpylyzer_failures(codestream, work, "j2c")), (name, params, failed)
        expected = opj_decode(whole, work, reduce=drop, layers=kept)
        assert np.array_equal(opj_decode(codestream, work), expected), (name, params)


@pytest.mark.parametrize("name", IMAGES)
def test_htj2k_frames_are_valid_and_decode_losslessly(
    client: httpx.Client, stored: dict[str, Stored], name: str, work: Path
) -> None:
    image = stored[name]
    levels = client.get(image.url + "/layers").json()["frames"][0]["levels"]
    whole, ts = frame(client, image, 1, "image/jphc")
    assert ts == HT_WHOLE
    assert not (failed := jpylyzer_failures(whole, work, "jhc")), (name, failed)
    assert np.array_equal(opj_decode(whole, work), image.original(1)), name
    for drop in sorted({1, len(levels) - 1}):
        level = levels[drop]
        codestream, ts = frame(client, image, 1, "image/jphc", fsiz=f"{level['columns']},{level['rows']}")
        assert ts == HT_CUT
        assert not (failed := jpylyzer_failures(codestream, work, "jhc")), (name, drop, failed)
        assert np.array_equal(opj_decode(codestream, work), opj_decode(whole, work, reduce=drop)), (
            name,
            drop,
        )
