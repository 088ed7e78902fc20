"""One replica on a local folder (SQLite) against two replicas on PostgreSQL + S3 behind HAProxy
(bench/cluster.py): STOW, frame and QIDO throughput, and frame read latency (median, p95).

    python -m bench.cluster_bench --quick     # 60 CT slices + 50 small studies, fewer rounds
    python -m bench.cluster_bench             # 300 CT slices + 500 small studies

Both setups run on this one machine (2 cores, shared): the cluster's two replicas, PostgreSQL, the S3
server (moto, a Python program) and HAProxy share the cores that the single replica has to itself. So the
figures show what the cluster costs per request (network hops, SQL over TCP, S3 requests), not what it
gains: replicas on separate machines add cores; here they only split the same two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.cluster import BUCKET, S3_CREDENTIALS, Cluster
from bench.corpus import Corpus, build_corpus, corpus_size
from bench.dicomweb_urls import DICOM_JSON, FRAME_ACCEPT, FRAME_NATIVE_ACCEPT, frame_urls, study_list_url
from bench.http_client import CLIENT_ERRORS, Client
from bench.load import fetch_all, timed_get
from bench.measure import markdown_table
from bench.servers import start_ours
from bench.stow import prepare_stow, stow

CONCURRENCY = 8  # requests in flight: a few viewers, or a gateway pushing in parallel


def wait_masters(client: Client, url: str, timeout: float = 1800) -> float:
    """Seconds until no master is pending (the background work a STOW leaves)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if client.get(f"{url}/status").json()["pending_masters"] == 0:  # type: ignore[index]
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def throughput(
    client: Client, urls: list[str], headers: dict[str, str], check: Callable[[object], bool]
) -> tuple[float, str]:
    seconds, answers = fetch_all(client, urls, headers, CONCURRENCY)
    bad = sum(1 for a in answers if isinstance(a, Exception) or not check(a))
    return len(urls) / seconds, f"{bad} failed" if bad else ""


def latencies(client: Client, urls: list[str], headers: dict[str, str]) -> tuple[float, float]:
    """(median, p95) ms of sequential GETs, one per URL, after one warm-up."""
    timed_get(client, urls[0], headers)
    times = []
    for url in urls:
        try:
            dt, r = timed_get(client, url, headers)
        except CLIENT_ERRORS:
            continue
        if r.status_code == 200:
            times.append(dt * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def measure(name: str, url: str, corpus: Corpus, rounds: int, log: Callable[[str], None]) -> dict[str, str]:
    out: dict[str, str] = {}
    batches = prepare_stow(corpus.paths())
    with Client() as client:
        r = stow(client, url, batches, CONCURRENCY)
        out["STOW (instances/s)"] = f"{r.per_second:.1f}" + (
            f" ({'; '.join(r.problems)})" if r.problems else ""
        )
        masters = wait_masters(client, url)
        out["STOW + masters made (instances/s)"] = f"{r.instances / (r.seconds + masters):.1f}"
        log(f"[{name}] STOW {r.instances} instances in {r.seconds:.1f} s, masters {masters:.1f} s more")

        frames = frame_urls(url, corpus) * rounds
        ok = lambda a: a.status_code == 200
        rate, note = throughput(client, frames, {"Accept": FRAME_ACCEPT}, ok)
        out["frames, stored J2K (frames/s)"] = f"{rate:.0f}{' ' + note if note else ''}"
        rate, note = throughput(client, frames, {"Accept": FRAME_NATIVE_ACCEPT}, ok)
        out["frames, decoded (frames/s)"] = f"{rate:.0f}{' ' + note if note else ''}"
        names = sorted({n[:1] for n in corpus.patient_names if n}) or ["*"]
        queries = [study_list_url(url, f"{letter}*") for letter in names] * (rounds * 4)
        rate, note = throughput(client, queries, {"Accept": DICOM_JSON}, ok)
        out["QIDO study list (queries/s)"] = f"{rate:.0f}{' ' + note if note else ''}"
        med, p95 = latencies(
            client, frame_urls(url, corpus), {"Accept": "application/octet-stream; transfer-syntax=*"}
        )
        out["frame read, one at a time (median / p95 ms)"] = f"{med:.1f} / {p95:.1f}"
        log(f"[{name}] {out}")
    return out


def store_read_latency(endpoint: str, reads: int) -> dict[str, str]:
    """Ranged reads of frame-sized pieces (64 to 512 KiB) straight from the blob stores, no HTTP: the S3
    store (the bucket of moto's server on loopback) against the local folder (page cache warm)."""
    from storage.blobs import LocalBlobStore
    from storage.config import Settings
    from storage.s3_blobs import S3BlobStore

    os.environ.update({**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
    work = Path(tempfile.mkdtemp(prefix="bench-blobs-"))
    try:
        s3 = S3BlobStore.from_settings(
            Settings(data_dir=work, blob_url=f"s3://{BUCKET}/bench", s3_endpoint=endpoint)
        )
        local = LocalBlobStore(work / "blobs")
        data = os.urandom(16 << 20)
        rng = random.Random(7)
        ranges = [
            (o, n)
            for n in (rng.choice((64, 128, 256, 512)) << 10 for _ in range(reads))
            for o in [rng.randrange(0, len(data) - n)]
        ]

        async def run() -> dict[str, str]:
            out = {}
            for name, store in (("local folder", local), ("S3 (moto on loopback)", s3)):
                (work / "src").write_bytes(data)
                await store.put_file("ab/1.2/1.2.3.dcm", work / "src")
                await store.read("ab/1.2/1.2.3.dcm", 0, 1024)
                times = []
                for offset, length in ranges:
                    t0 = time.perf_counter()
                    got = await store.read("ab/1.2/1.2.3.dcm", offset, length)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert got == data[offset : offset + length]
                times.sort()
                out[name] = f"{statistics.median(times):.2f} / {times[round(0.95 * (len(times) - 1))]:.2f}"
            return out

        return asyncio.run(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small corpus, fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)
    corpus = build_corpus(*corpus_size(args.quick), log=log)
    rounds = 2 if args.quick else 5
    results: dict[str, dict[str, str]] = {}
    with ExitStack() as stack:
        local = stack.enter_context(start_ours())
        log(f"[local] {local.description}")
        results["1 replica, SQLite + folder"] = measure("local", local.dicomweb_url, corpus, rounds, log)
        stack.close()
        cluster = Cluster().start()
        stack.callback(shutil.rmtree, cluster.base, True)
        stack.callback(cluster.stop)
        log(f"[cluster]\n{cluster.describe()}")
        results["2 replicas via HAProxy, PostgreSQL + S3"] = measure(
            "cluster", cluster.root, corpus, rounds, log
        )
        # The same S3-backed replica without the balancer: what the extra hop costs.
        replica = f"{cluster.nodes[0].base}/dicom-web"
        with Client() as client:
            med, p95 = latencies(
                client, frame_urls(replica, corpus), {"Accept": "application/octet-stream; transfer-syntax=*"}
            )
        results["1 replica on S3, direct"] = {
            "frame read, one at a time (median / p95 ms)": f"{med:.1f} / {p95:.1f}"
        }
        blob_reads = store_read_latency(cluster.s3_endpoint, 100 if args.quick else 500)
    rows = list(next(iter(results.values())))
    header = ["", *results]
    table = [[row, *(r.get(row, "") for r in results.values())] for row in rows]
    print(
        f"corpus: {corpus.ct_slices} CT slices + {corpus.small_studies} small studies; "
        f"{CONCURRENCY} requests in flight; frames x{rounds}"
    )
    print("\n".join(markdown_table(header, table, "l" + "r" * len(results))))
    print()
    print("ranged read of 64-512 KiB from a 16 MiB blob, in the blob store (no HTTP), median / p95 ms:")
    print("\n".join(markdown_table(["store", "median / p95 ms"], list(blob_reads.items()), "lr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
