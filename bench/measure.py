"""Helpers shared by the benchmarks: timing, one measured figure, and tables (plain text and Markdown)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Measure:
    """One figure for one server; ``problem`` set means the answer was wrong."""

    value: float | None
    problem: str | None = None
    detail: str = ""


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic GC pauses inside a timed section (they would hit the client,
    not the server); collect before and after instead."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def median_ms(fn: Callable[[], object], repeat: int, *, warm_up: bool = True) -> float:
    """Median wall time of `fn` in milliseconds over `repeat` calls (after one untimed call: library
    loading and the page cache would otherwise land in the first sample)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def table(header: list[str], rows: list[list[str]]) -> str:
    """A right-aligned plain-text table with a rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


MARKDOWN_ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> list[str]:
    """The lines of a Markdown table; ``align`` has a letter per column: l(eft), r(ight) or c(entre)."""
    if len(align) != len(header):
        raise ValueError(f"{len(header)} columns but alignment {align!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(MARKDOWN_ALIGN[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
