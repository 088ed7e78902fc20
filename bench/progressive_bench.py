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
from contextlib import ExitStack
from pathlib import Path

from bench.checks import checked
from bench.corpus import Corpus, build_corpus, corpus_size
from bench.dicomweb_urls import FRAME_ACCEPT, ct_instance_urls, frame_urls, instance_url
from bench.http_client import Client
from bench.load import BROWSER_CONNECTIONS, fetch_all
from bench.measure import markdown_table, median_ms
from bench.servers import ServerHandle, dir_bytes, start_ours, start_peer
from bench.stow import StowBatch, load_servers, prepare_stow
from storage.mastering.queue import DELETE_GRACE_SECONDS

LINK_BITS_PER_SECOND = 2e6
REQUEST_LATENCY = 0.05
JP2 = "image/jp2"
OCTET = "application/octet-stream"
PREVIEW = "layers=1&fsiz=256,256"


def modelled_seconds(total_bytes: int, requests: int) -> float:
    return (
        total_bytes * 8 / LINK_BITS_PER_SECOND + math.ceil(requests / BROWSER_CONNECTIONS) * REQUEST_LATENCY
    )


def fetch_bytes(client: Client, urls: Sequence[str], accept: str, media: str) -> int:
    """Total body bytes of every URL (each checked for status and type), fetched as a browser would."""
    _seconds, answers = fetch_all(client, urls, {"Accept": accept})
    total = 0
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, Exception):
            raise answer
        total += len(checked(answer, media, url))
    return total


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
    rows = []
    for s in servers:
        result = loaded[s.name]
        if result.stow.problem:
            raise RuntimeError(f"{s.name}: STOW problems: {result.stow.problem}")
        ratio = f"{result.stow.value / loaded[peer.name].stow.value:.2f}" if peer is not None else "-"
        work = f"{result.background_seconds:.1f} s (masters)" if s is ours else "none (stored as received)"
        rows.append([s.name, f"{result.stow.value:.0f}", ratio, work, f"{dir_bytes(s.data_dirs):,}"])
    header = [
        "STOW-RS of the CT series and the CR",
        "instances/s",
        "vs Orthanc",
        "background work",
        "bytes stored",
    ]
    return markdown_table(header, rows, "lrrrr")


def uids_of(path: Path) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def single_frame_table(client: Client, ours: ServerHandle, images: dict[str, str]) -> list[str]:
    rows = []
    for name, url in images.items():
        frame = url + "/frames/1"
        preview = checked(client.get(f"{frame}?{PREVIEW}", {"Accept": JP2}), JP2, name)
        layer2 = checked(client.get(f"{frame}?layers=2", {"Accept": JP2}), JP2, name)
        lossless = checked(client.get(frame, {"Accept": JP2}), JP2, name)
        raw = checked(client.get(frame, {"Accept": OCTET}), OCTET, name)
        ladder = json.loads(checked(client.get(url + "/layers"), "application/json", name))
        psnr = ladder["frames"][0]["layers"][0]["psnr"]
        rows.append(
            [
                name,
                f"{len(preview):,} B",
                f"{len(layer2):,} B",
                f"{len(lossless):,} B",
                f"{len(raw):,} B",
                f"{len(preview) / len(raw):.1%}",
                f"{psnr:.1f} dB",
            ]
        )
    header = [
        "image",
        "preview `layers=1&fsiz=256,256`",
        "`layers=2`, full size",
        "lossless",
        "uncompressed",
        "preview / uncompressed",
        "layer-1 PSNR (full size)",
    ]
    return markdown_table(header, rows, "lrrrrrr")


def stack_table(client: Client, ours: ServerHandle, peer: ServerHandle | None, corpus: Corpus) -> list[str]:
    ours_frames = frame_urls(ours.dicomweb_url, corpus)
    n = len(ours_frames)
    results: list[tuple[str, int, int]] = []  # label, bytes, requests
    preview = fetch_bytes(client, [f"{u}?{PREVIEW}" for u in ours_frames], JP2, JP2)
    lossless = fetch_bytes(client, ours_frames, JP2, JP2)
    results.append(("ours: preview stack (`layers=1&fsiz=256,256`)", preview, n))
    results.append(("ours: then the lossless stack (whole masters)", preview + lossless, 2 * n))
    results.append(("ours: lossless stack alone", lossless, n))
    if peer is not None:
        stored = fetch_bytes(client, frame_urls(peer.dicomweb_url, corpus), FRAME_ACCEPT, "multipart/related")
        results.append(("Orthanc: frames as stored (OHIF's default Accept)", stored, n))
        try:
            peer_instances = ct_instance_urls(peer.dicomweb_url, corpus)
            rendered = fetch_bytes(
                client, [f"{u}/rendered" for u in peer_instances], "image/jpeg", "image/jpeg"
            )
            results.append(("Orthanc: rendered images (JPEG)", rendered, n))
        except RuntimeError as exc:
            print(f"Orthanc rendered images unavailable: {exc}", file=sys.stderr)
    preview_time = modelled_seconds(preview, n)
    rows = []
    for label, total, requests in results:
        seconds = modelled_seconds(total, requests)
        rows.append([label, f"{total:,}", f"{seconds:.1f} s", f"{seconds / preview_time:.1f}x"])
    header = [f"{n}-slice CT stack", "bytes", "modelled time at 2 Mbit/s", "time / our preview stack's"]
    return markdown_table(header, rows, "lrrr")


def server_time_table(client: Client, cr_url: str, runs: int) -> list[str]:
    frame = cr_url + "/frames/1"
    full = median_ms(lambda: checked(client.get(frame, {"Accept": OCTET}), OCTET, "full"), runs)
    rows = []
    for label, url, accept, media in (
        ("cut frame `layers=1&fsiz=256,256`", f"{frame}?{PREVIEW}", JP2, JP2),
        ("cut frame `layers=2`", f"{frame}?layers=2", JP2, JP2),
        ("256x256 thumbnail (JPEG)", f"{cr_url}/thumbnail?viewport=256,256", "image/jpeg", "image/jpeg"),
        ("uncompressed frame (full-size decode)", frame, OCTET, OCTET),
    ):
        ms = median_ms(lambda u=url, a=accept, m=media: checked(client.get(u, {"Accept": a}), m, u), runs)
        rows.append([label, f"{ms:.1f}", f"{ms / full:.3f}"])
    return markdown_table(["request (1955x1841 CR)", "median ms", "against a full-size decode"], rows, "lrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="60-slice CT for smoke runs")
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    corpus = build_corpus(*corpus_size(args.quick))
    ct = [corpus.root / f for f in corpus.files if f.startswith("ct/")]
    cr = corpus.root / "wg04" / "CR_RG1_UNCR.dcm"
    batches = prepare_stow([*ct, cr])
    # Every uncompressed request must really decode: the baseline of the server-time table.
    os.environ["DICOMWEB_DECODED_CACHE_MB"] = "0"
    client = Client()
    with ExitStack() as stack:
        ours = stack.enter_context(start_ours())
        peer = start_peer(stack)
        print("\n".join(ingest_table(ours, peer, batches)), end="\n\n")
        mid = corpus.ct_sop_uids[len(corpus.ct_sop_uids) // 2]
        images = {
            "CT 512x512, middle slice": instance_url(
                ours.dicomweb_url, corpus.ct_study_uid, corpus.ct_series_uid, mid
            ),
            "CR 1955x1841": instance_url(ours.dicomweb_url, *uids_of(cr)),
        }
        print("\n".join(single_frame_table(client, ours, images)), end="\n\n")
        print("\n".join(stack_table(client, ours, peer, corpus)), end="\n\n")
        print("\n".join(server_time_table(client, images["CR 1955x1841"], args.runs)))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
