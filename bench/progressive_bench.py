"""Progressive retrieval against Orthanc: what a viewer on a slow link receives, and when.

Run from the repository: ``python -m bench.progressive_bench [--quick]``.

Both servers get the same corpus (the 300-slice CT and the WG04 CR of bench/corpus.py) by STOW-RS. Then:

0. STOW-RS rate of the CT series and the CR into each server (in alternating slices, as bench.server_bench
   loads), the background time our masters took, and the bytes each server then keeps.
1. For the middle CT slice and the 1955x1841 CR: bytes of the first preview (``layers=1&fsiz=256,256``),
   of ``layers=2`` at full size, of the lossless frame and of the uncompressed frame, with the PSNR of
   layer 1 (full size) from ``/layers``.
2. Bytes and modelled time to bring a preview of every CT slice to a client, then the lossless stack;
   the same for Orthanc serving the frames as stored (what OHIF asks for by default) and serving its
   rendered images. The model: bytes over a 2 Mbit/s link, plus 50 ms per request with six requests in
   flight (a browser's connections per host), so ``bytes * 8 / 2e6 + ceil(n / 6) * 0.05`` seconds.
3. Server time per cut-frame request and per 256x256 thumbnail of the CR, against a full-size decode
   (an uncompressed frame of the master, with the decoded-frame cache off so every request decodes).

Every byte counted is a real response body, checked for status and type: a fast wrong answer cannot win.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from bench import orthanc
from bench.corpus import (
    FULL_CT_SLICES,
    FULL_SMALL_STUDIES,
    QUICK_CT_SLICES,
    QUICK_SMALL_STUDIES,
    Corpus,
    build_corpus,
)
from bench.http_client import Client, Response
from bench.measure import median_ms
from bench.servers import ServerHandle, dir_bytes, start_orthanc, start_ours
from bench.stow import StowBatch, load_servers, prepare_stow
from storage.master_queue import DELETE_GRACE_SECONDS

LINK_BITS_PER_SECOND = 2e6
REQUEST_LATENCY = 0.05
IN_FLIGHT = 6
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JP2 = "image/jp2"
OCTET = "application/octet-stream"
PREVIEW = "layers=1&fsiz=256,256"


def modelled_seconds(total_bytes: int, requests: int) -> float:
    return total_bytes * 8 / LINK_BITS_PER_SECOND + math.ceil(requests / IN_FLIGHT) * REQUEST_LATENCY


def checked(r: Response, media: str, what: str) -> bytes:
    if r.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.content[:200]!r}")
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith(media):
        raise RuntimeError(f"{what}: Content-Type {ctype!r}, expected {media}")
    return r.content


def fetch_all(client: Client, urls: Sequence[str], accept: str, media: str) -> int:
    """Total body bytes of every URL, fetched six at a time as a browser would."""
    def one(url: str) -> int:
        return len(checked(client.get(url, {"Accept": accept}), media, url))

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return sum(pool.map(one, urls))


def wait_for_masters(client: Client, handle: ServerHandle, timeout: float = 1800) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        r = client.get(f"{handle.dicomweb_url}/status")
        if r.status_code == 200 and not json.loads(r.content)["pending_masters"]:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise TimeoutError("masters still pending")


def ingest_table(ours: ServerHandle, peer: ServerHandle | None, batches: list[StowBatch]) -> list[str]:
    """STOW rate of the same load into both servers, in alternating slices (as bench.server_bench
    does, so a noisy moment does not land on one server), the background time our masters took and
    the bytes each server keeps."""
    servers = [s for s in (ours, peer) if s is not None]
    clients = {s.name: Client() for s in servers}
    try:
        loaded = load_servers(servers, clients, batches, log=lambda _msg: None)
        wait_for_masters(clients[ours.name], ours)
    finally:
        for c in clients.values():
            c.close()
    time.sleep(DELETE_GRACE_SECONDS + 2)  # received files go after the grace period
    rows = ["| STOW-RS of the CT series and the CR | instances/s | vs Orthanc | background work | bytes stored |",
            "|---|---:|---:|---:|---:|"]
    for s in servers:
        result = loaded[s.name]
        if result.stow.problem:
            raise RuntimeError(f"{s.name}: STOW problems: {result.stow.problem}")
        ratio = f"{result.stow.value / loaded[peer.name].stow.value:.2f}" if peer is not None else "-"
        work = f"{result.background_seconds:.1f} s (masters)" if s is ours else "none (stored as received)"
        rows.append(f"| {s.name} | {result.stow.value:.0f} | {ratio} | {work} | {dir_bytes(s.data_dirs):,} |")
    return rows


def instance_url(handle: ServerHandle, study: str, series: str, sop: str) -> str:
    return f"{handle.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"


def uids_of(path: Path) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID



def single_frame_table(client: Client, ours: ServerHandle, images: dict[str, str]) -> list[str]:
    rows = [("| image | preview `layers=1&fsiz=256,256` | `layers=2`, full size | lossless | uncompressed "
            "| preview / uncompressed | layer-1 PSNR (full size) |"),
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, url in images.items():
        frame = url + "/frames/1"
        preview = checked(client.get(f"{frame}?{PREVIEW}", {"Accept": JP2}), JP2, name)
        layer2 = checked(client.get(f"{frame}?layers=2", {"Accept": JP2}), JP2, name)
        lossless = checked(client.get(frame, {"Accept": JP2}), JP2, name)
        raw = checked(client.get(frame, {"Accept": OCTET}), OCTET, name)
        ladder = json.loads(checked(client.get(url + "/layers"), "application/json", name))
        psnr = ladder["frames"][0]["layers"][0]["psnr"]
        rows.append(f"| {name} | {len(preview):,} B | {len(layer2):,} B | {len(lossless):,} B | {len(raw):,} B "
                    f"| {len(preview) / len(raw):.1%} | {psnr:.1f} dB |")
    return rows


def stack_table(client: Client, ours: ServerHandle, peer: ServerHandle | None, corpus: Corpus) -> list[str]:
    study, series = corpus.ct_study_uid, corpus.ct_series_uid
    ours_urls = [instance_url(ours, study, series, sop) for sop in corpus.ct_sop_uids]
    n = len(ours_urls)
    results: list[tuple[str, int, int]] = []  # label, bytes, requests
    preview = fetch_all(client, [f"{u}/frames/1?{PREVIEW}" for u in ours_urls], JP2, JP2)
    lossless = fetch_all(client, [f"{u}/frames/1" for u in ours_urls], JP2, JP2)
    results.append(("ours: preview stack (`layers=1&fsiz=256,256`)", preview, n))
    results.append(("ours: then the lossless stack (whole masters)", preview + lossless, 2 * n))
    results.append(("ours: lossless stack alone", lossless, n))
    if peer is not None:
        peer_urls = [instance_url(peer, study, series, sop) for sop in corpus.ct_sop_uids]
        stored = fetch_all(client, [f"{u}/frames/1" for u in peer_urls], OHIF_FRAMES, "multipart/related")
        results.append(("Orthanc: frames as stored (OHIF's default Accept)", stored, n))
        try:
            rendered = fetch_all(client, [f"{u}/rendered" for u in peer_urls], "image/jpeg", "image/jpeg")
            results.append(("Orthanc: rendered images (JPEG)", rendered, n))
        except RuntimeError as exc:
            print(f"Orthanc rendered images unavailable: {exc}", file=sys.stderr)
    preview_time = modelled_seconds(preview, n)
    rows = [f"| {n}-slice CT stack | bytes | modelled time at 2 Mbit/s | time / our preview stack's |",
            "|---|---:|---:|---:|"]
    for label, total, requests in results:
        seconds = modelled_seconds(total, requests)
        rows.append(f"| {label} | {total:,} | {seconds:.1f} s | {seconds / preview_time:.1f}x |")
    return rows


def server_time_table(client: Client, cr_url: str, runs: int) -> list[str]:
    frame = cr_url + "/frames/1"
    full = median_ms(lambda: checked(client.get(frame, {"Accept": OCTET}), OCTET, "full"), runs)
    rows = ["| request (1955x1841 CR) | median ms | against a full-size decode |", "|---|---:|---:|"]
    for label, url, accept, media in (
        ("cut frame `layers=1&fsiz=256,256`", f"{frame}?{PREVIEW}", JP2, JP2),
        ("cut frame `layers=2`", f"{frame}?layers=2", JP2, JP2),
        ("256x256 thumbnail (JPEG)", f"{cr_url}/thumbnail?viewport=256,256", "image/jpeg", "image/jpeg"),
        ("uncompressed frame (full-size decode)", frame, OCTET, OCTET),
    ):
        ms = median_ms(lambda u=url, a=accept, m=media: checked(client.get(u, {"Accept": a}), m, u), runs)
        rows.append(f"| {label} | {ms:.1f} | {ms / full:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="60-slice CT for smoke runs")
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    slices, small = (QUICK_CT_SLICES, QUICK_SMALL_STUDIES) if args.quick else (FULL_CT_SLICES, FULL_SMALL_STUDIES)
    corpus = build_corpus(slices, small)
    ct = [corpus.root / f for f in corpus.files if f.startswith("ct/")]
    cr = corpus.root / "wg04" / "CR_RG1_UNCR.dcm"
    batches = prepare_stow([*ct, cr])
    # Every uncompressed request must really decode: the baseline of the server-time table.
    os.environ["DICOMWEB_DECODED_CACHE_MB"] = "0"
    client = Client()
    with ExitStack() as stack:
        ours = stack.enter_context(start_ours())
        ok, why = orthanc.available()
        peer = stack.enter_context(start_orthanc()) if ok else None
        if peer is None:
            print(f"Orthanc not installed: skipping peer ({why})")
        print("\n".join(ingest_table(ours, peer, batches)), end="\n\n")
        mid = corpus.ct_sop_uids[len(corpus.ct_sop_uids) // 2]
        images = {
            "CT 512x512, middle slice": instance_url(ours, corpus.ct_study_uid, corpus.ct_series_uid, mid),
            "CR 1955x1841": instance_url(ours, *uids_of(cr)),
        }
        print("\n".join(single_frame_table(client, ours, images)), end="\n\n")
        print("\n".join(stack_table(client, ours, peer, corpus)), end="\n\n")
        print("\n".join(server_time_table(client, images["CR 1955x1841"], args.runs)))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
