"""OHIF's request pattern on a slow link: ``python -m bench.ohif_bench [--quick]``.

What OHIF 3.13 asks for when it opens the CT series (300 slices; 60 with --quick), modelled on a 2 Mbit/s
link with 50 ms per request and six requests in flight (bench.progressive_bench's model:
``bytes * 8 / 2e6 + ceil(requests / 6) * 0.05`` seconds, phases one after another on the one link):

- this server, ``/ohif/`` (two retrieve stages, dicomweb/static_sites.py): the series metadata; the first
  slice's cut (``layers=preview``, LOSSY) and then its master (the displayed slice goes first); then OHIF's
  stack prefetch brings every other slice as a cut; each slice becomes lossless (its master) when shown.
  "Every slice shown" is when the last cut has arrived; "every slice lossless" when the last master has.
- this server, ``/ohif-single/``: the metadata, then every master (shown = lossless).
- Orthanc: the metadata, then every frame as it stores it (OHIF's default Accept; shown = lossless).

Every body is a real answer of the server (OHIF's Accept headers, gzip for the metadata as browsers ask),
checked for status and type; bytes are what would cross the link.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from contextlib import ExitStack

from bench.checks import checked
from bench.corpus import Corpus, build_corpus, corpus_size
from bench.dicomweb_urls import DICOM_JSON, FRAME_ACCEPT, frame_urls, series_metadata_url
from bench.http_client import Client
from bench.load import BROWSER_CONNECTIONS, fetch_all
from bench.measure import markdown_table
from bench.progressive_bench import wait_for_masters
from bench.servers import ServerHandle, start_ours, start_peer
from bench.stow import load_servers, prepare_stow

LINK_BITS_PER_SECOND = 2e6
REQUEST_LATENCY = 0.05
MULTIPART = "multipart/related"


def link_seconds(total_bytes: int, requests: int) -> float:
    return (
        total_bytes * 8 / LINK_BITS_PER_SECOND + math.ceil(requests / BROWSER_CONNECTIONS) * REQUEST_LATENCY
    )


def body_sizes(client: Client, urls: Sequence[str], accept: str) -> list[int]:
    """Bytes of each answer (checked: 200, multipart), fetched as a browser would."""
    _seconds, answers = fetch_all(client, urls, {"Accept": accept})
    sizes = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, Exception):
            raise answer
        sizes.append(len(checked(answer, MULTIPART, url)))
    return sizes


def metadata_bytes(client: Client, server: ServerHandle, corpus: Corpus) -> int:
    r = client.get(
        series_metadata_url(server.dicomweb_url, corpus), {"Accept": DICOM_JSON, "Accept-Encoding": "gzip"}
    )
    return len(checked(r, DICOM_JSON, f"{server.name} metadata"))


def rows_for(
    client: Client, ours: ServerHandle, peer: ServerHandle | None, corpus: Corpus
) -> list[list[str]]:
    urls = frame_urls(ours.dicomweb_url, corpus)
    n = len(urls)
    meta = metadata_bytes(client, ours, corpus)
    cuts = body_sizes(client, [f"{u}?layers=preview" for u in urls], FRAME_ACCEPT)
    masters = body_sizes(client, urls, FRAME_ACCEPT)
    # (label, first slice shown, every slice shown, every slice lossless, bytes)
    results: list[tuple[str, float, float, float, int]] = []
    # /ohif/: metadata, slice 1's cut then its master, the other cuts (prefetch), then the other masters.
    first = link_seconds(meta, 1) + link_seconds(cuts[0], 1)
    shown = first + link_seconds(masters[0], 1) + link_seconds(sum(cuts[1:]), n - 1)
    results.append(
        (
            "this server, `/ohif/` (cut, then master)",
            first,
            shown,
            shown + link_seconds(sum(masters[1:]), n - 1),
            meta + sum(cuts) + sum(masters),
        )
    )
    single = link_seconds(meta, 1) + link_seconds(sum(masters), n)
    results.append(
        (
            "this server, `/ohif-single/` (masters)",
            link_seconds(meta, 1) + link_seconds(masters[0], 1),
            single,
            single,
            meta + sum(masters),
        )
    )
    if peer is not None:
        p_meta = metadata_bytes(client, peer, corpus)
        stored = body_sizes(client, frame_urls(peer.dicomweb_url, corpus), FRAME_ACCEPT)
        whole = link_seconds(p_meta, 1) + link_seconds(sum(stored), n)
        results.append(
            (
                "Orthanc, frames as stored (OHIF's default)",
                link_seconds(p_meta, 1) + link_seconds(stored[0], 1),
                whole,
                whole,
                p_meta + sum(stored),
            )
        )
    peer_row = results[-1] if peer is not None else None
    rows = []
    for label, first_s, shown_s, lossless_s, total in results:
        row = [label, f"{first_s:.2f} s", f"{shown_s:.1f} s"]
        if peer_row is not None:
            row.append(f"{peer_row[2] / shown_s:.1f}x")
        row.append(f"{lossless_s:.1f} s")
        if peer_row is not None:
            row.append(f"{peer_row[3] / lossless_s:.1f}x")
        rows.append([*row, f"{total:,}"])
    print(
        f"per slice here: cut {sum(cuts) / n:,.0f} B, master {sum(masters) / n:,.0f} B; "
        f"metadata {meta:,} B (gzip)"
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="60-slice CT for smoke runs")
    args = p.parse_args(argv)
    corpus = build_corpus(*corpus_size(args.quick))
    batches = prepare_stow([corpus.root / f for f in corpus.files if f.startswith("ct/")])
    client = Client()
    with ExitStack() as stack:
        ours = stack.enter_context(start_ours())
        peer = start_peer(stack)
        servers = [s for s in (ours, peer) if s is not None]
        clients = {s.name: Client() for s in servers}
        load_servers(servers, clients, batches, log=lambda _msg: None)
        for c in clients.values():
            c.close()
        wait_for_masters(client, ours)
        rows = rows_for(client, ours, peer, corpus)
    client.close()
    n = len(corpus.ct_sop_uids)
    ratio = ["Orthanc's time / this"] if peer is not None else []
    header = [
        f"OHIF opening the {n}-slice CT at 2 Mbit/s",
        "first slice shown",
        "every slice shown",
        *ratio,
        "every slice lossless",
        *ratio,
        "bytes",
    ]
    print("\n".join(markdown_table(header, rows, "l" + "r" * (len(header) - 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
