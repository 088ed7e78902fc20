"""What deferring the fidelity ladder saves a master (issue 15): ``python -m bench.ladder_ab [--repeat N]``.

Per image (the WG04 512x512 CT slice, and the 2k CR of bench.corpus.WG04_FILES), in one process with
the runs interleaved (A, B, A, B...) so that a noisy shared machine hits both alike:

- A, the master as it was made before: ``make_master`` plus the ladder measured inside it
  (``fidelity_ladder`` of the codestream against the original pixels, the last prefix known lossless);
- B, the master as it is made now: ``make_master`` alone (cut sizes, no lossy decode);
- the ladder job that B leaves for later (``storage.ladder.measure_master``: one full decode, since the
  original pixels are gone, then the lossy prefixes), run when no master waits.

Times are medians of wall time in milliseconds with the default codec threads; compare ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from bench.corpus import WG04_FILES, wg04_path
from bench.measure import table
from storage.codec import fidelity_ladder
from storage.dicom_file import parse_instance
from storage.ladder import measure_master
from storage.mastering.make import make_master, original_frames

IMAGES = [("CT 512x512", "693_UNCR.dcm"), ("CR 2k", WG04_FILES["CR"])]


def _made(path: Path, work: Path) -> None:
    make_master(path, work).path.unlink()


def _made_with_ladder(path: Path, work: Path, originals: list[np.ndarray]) -> None:
    """make_master and then the ladder it used to measure inside (the same calls, on its codestreams)."""
    master = make_master(path, work)
    ds = pydicom.dcmread(master.path)
    frames = generate_frames(ds.PixelData, number_of_frames=len(originals))
    for codestream, original in zip(frames, originals, strict=True):
        fidelity_ladder(codestream, original, whole_verified=True)
    master.path.unlink()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def measure(path: Path, repeat: int) -> tuple[float, float, float]:
    source = pydicom.dcmread(path)
    originals = original_frames(source, path)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kept = make_master(path, work)
        pieces = parse_instance(kept.path).frames
        a: list[float] = []
        b: list[float] = []
        job: list[float] = []
        _made_with_ladder(path, work, originals)  # warm-up: libraries, page cache
        for _ in range(repeat):
            a.append(_timed(lambda: _made_with_ladder(path, work, originals)))
            b.append(_timed(lambda: _made(path, work)))
            job.append(_timed(lambda: measure_master(kept.path, pieces)))
        kept.path.unlink()
    return statistics.median(a), statistics.median(b), statistics.median(job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cores")
    rows = []
    for label, name in IMAGES:
        repeat = args.repeat if "CT" in label else max(3, args.repeat // 3)
        before, after, job = measure(wg04_path(name), repeat)
        rows.append(
            [
                label,
                f"{before:.0f}",
                f"{after:.0f}",
                f"{(1 - after / before) * 100:.0f} %",
                f"{before / after:.2f}x",
                f"{job:.0f}",
            ]
        )
    header = ["image", "A: with ladder ms", "B: master only ms", "saved", "masters/s gain", "ladder job ms"]
    print(table(header, rows))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
