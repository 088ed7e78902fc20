"""The per-frame fidelity ladder of a master as the index stores it (``instances.fidelity``, JSON), and
measuring it after the master is made.

A master is usable from its codestream alone; what each lossy layer prefix gives (PSNR, maximum error)
is only needed to choose a preview, a thumbnail's layers or a lifecycle cut. Measuring it costs a decode
per lossy prefix (55 of the 116 ms of CPU a 512x512 CT master took, issue 15), so the master queue no
longer does it: `make_master` records what is free, and a low-priority job of the same queue
(storage.mastering.queue, job state LADDER_JOB) measures the rest once no master waits.

Per frame: ``number``, ``rows``, ``columns``, ``levels`` and ``layers``, a list of steps (the first k
quality layers) with ``layers``, ``bytes`` (the cut's size), ``psnr`` (dB; None when identical),
``max_error``, ``lossless`` and ``measured``. An unmeasured lossy step has ``psnr`` and ``max_error``
None, ``lossless`` false (not known to be lossless) and ``measured`` false; the last step is always
known (the master was verified bit-exact: lossless, error 0). Ladders written before this change have
no ``measured`` key: they were measured, so a missing key means measured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from storage.codec import cut, decode, fidelity_ladder, info
from storage.codec.fidelity import THREADED_SAMPLES
from storage.dicom_file import frame_from_file

# The master_jobs state of an instance whose master is made but whose ladder is not measured yet.
LADDER_JOB = "ladder"


def step_measured(step: Mapping[str, Any]) -> bool:
    return bool(step.get("measured", True))


def frame_measured(frame: Mapping[str, Any]) -> bool:
    return all(step_measured(s) for s in frame["layers"])


def ladder_measured(frames: Iterable[Mapping[str, Any]]) -> bool:
    """Whether every step of every frame is measured (an empty ladder is: there is nothing to measure)."""
    return all(frame_measured(f) for f in frames)


def levels_of(codestream: bytes) -> list[dict[str, int]]:
    """Rows and columns of each resolution level, full size first."""
    head = info(codestream)
    return [
        {"rows": -(-head.height // (1 << d)), "columns": -(-head.width // (1 << d))}
        for d in range(head.levels + 1)
    ]


def unmeasured_frame(number: int, codestream: bytes) -> dict[str, Any]:
    """The ladder of one verified frame without decoding anything: cut sizes, and the last step lossless.
    Cutting is parsing (a few ms for a 2k frame), not decoding."""
    head = info(codestream)
    steps: list[dict[str, Any]] = []
    for layers in range(1, head.layers + 1):
        last = layers == head.layers
        size = len(codestream) if last else len(cut(codestream, layers=layers))
        steps.append(
            {
                "layers": layers,
                "bytes": size,
                "psnr": None,
                "max_error": 0 if last else None,
                "lossless": last,
                "measured": last,
            }
        )
    return _frame(number, codestream, steps)


def _frame(number: int, codestream: bytes, steps: list[dict[str, Any]]) -> dict[str, Any]:
    levels = levels_of(codestream)
    return {
        "number": number,
        "rows": levels[0]["rows"],
        "columns": levels[0]["columns"],
        "levels": levels,
        "layers": steps,
    }


def measured_frame(number: int, codestream: bytes) -> dict[str, Any]:
    """The whole ladder of one frame of a verified master: the full decode is the original (the master
    was verified bit-exact), and every lossy prefix is measured against it (storage.codec.fidelity)."""
    head = info(codestream)
    threads = (os.cpu_count() or 1) if head.width * head.height * head.components >= THREADED_SAMPLES else 1
    original = decode(codestream, threads=threads)
    steps = [
        {**step.to_dict(), "measured": True}
        for step in fidelity_ladder(codestream, original, whole_verified=True)
    ]
    return _frame(number, codestream, steps)


def measure_master(path: Path, frames: Sequence[Sequence[Sequence[int]]]) -> list[dict[str, Any]]:
    """The measured ladder of every frame of the master file at `path`, whose frames lie at `frames`
    (the index's [offset, length] pieces per frame). CPU-bound: run it in a worker thread."""
    out = []
    with open(path, "rb") as fh:
        for number, pieces in enumerate(frames, start=1):
            out.append(measured_frame(number, frame_from_file(fh, pieces)))
    return out


def max_errors(frame: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Maximum error of each layer prefix of one frame; None when any is not measured (unknown)."""
    if not frame_measured(frame):
        return None
    return tuple(int(step["max_error"]) for step in frame["layers"])


def with_measured_flags(frames: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ladder with ``measured`` on every step (ladders from before it was a field lack it)."""
    return [{**f, "layers": [{**s, "measured": step_measured(s)} for s in f["layers"]]} for f in frames]
