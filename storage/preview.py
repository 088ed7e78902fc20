"""How many quality layers make a preview: chosen per frame from the master's fidelity ladder.

The rule (``preview_layers``): within a budget of a fifth of the lossless bytes, the fewest layers whose
PSNR reaches 60 dB; when no layer within the budget reaches it, the most layers the budget allows; never
the lossless layer, and at least one layer. Measured on the WG04 masters (``storage/codec/master.py``'s
ladder; bytes as a share of the lossless master, PSNR against 2^BitsStored - 1)::

    image                 chosen   bytes    PSNR     (layer 1: bytes, PSNR)
    CT 512x512 s14        2        13.6 %   65.3 dB  (2.7 %, 46.1 dB: a grey blob at a brain window)
    MR 1024x1024 u12      3        16.7 %   55.6 dB  (1.7 %, 48.3 dB)
    CR 1841x1955 u15      4        19.7 %   55.7 dB  (1.0 %, 45.4 dB)
    CR 1760x1760 u10      2        14.5 %   54.8 dB  (2.9 %, 51.8 dB)
    US 640x480 RGB u8     2        18.8 %   32.5 dB  (3.8 %, 22.0 dB)

Why these two numbers: 60 dB is where the CT, the hardest case (a narrow brain window on a 14-bit range),
stops showing blocks (layer 2, 65 dB, shows grey and white matter cleanly; layer 1, 46 dB, does not), and a
fifth of the bytes keeps a whole series of previews about five times faster than the lossless series on
any link, which is the point of a first stage. Images whose noise is incompressible (15-bit CR, MR) never
reach 60 dB within the budget, and get the best picture the budget buys instead.

A series' recommended count is the largest of its frames' (every frame then meets the rule). Clients that
cannot choose per instance (OHIF's static retrieve stages) ask for ``layers=preview``, and the server
applies the rule per instance (the largest count over its frames): the answer is the same cut, labelled
``.91``, as asking for that number.

A ladder is measured after its master (storage.ladder): until then only each prefix's bytes are known.
The rule then gives the most layers the budget allows, which is what it gives whenever no prefix within
the budget reaches 60 dB, and never fewer layers than the measured ladder will give: the preview keeps to
the same byte budget, looks at least as good, and costs no decode at request time (measuring a 2k CR's
ladder took 1.9 s in bench/ladder_ab.py on a busy 2-core machine, longer than a preview is meant to take;
a series' answer would need one per instance). That answer is not cached, so the measured choice takes
its place once the ladder job (or a `/layers` request) has run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import select

from storage import schema
from storage.ladder import ladder_measured, step_measured

MAX_BYTES_FRACTION = 0.20
MIN_PSNR_DB = 60.0
RULE = (
    f"the fewest quality layers with PSNR >= {MIN_PSNR_DB:g} dB within {MAX_BYTES_FRACTION:.0%} of the "
    "lossless bytes; else the most layers within that budget; never the lossless layer, at least 1"
)
# What `layers=` takes besides a number: the server applies the rule to the instance.
PREVIEW = "preview"
# The rule as /series/{se}/layers publishes it.
PREVIEW_RULE = {"text": RULE, "max_bytes_fraction": MAX_BYTES_FRACTION, "min_psnr_db": MIN_PSNR_DB}


def preview_layers(ladder: Sequence[Mapping[str, Any]]) -> int | None:
    """The layer count of a preview of one frame, from its ladder (``/layers``' ``layers`` list: cumulative
    ``bytes``, ``psnr`` (None when lossless), ``lossless``, ``measured``); None when even one layer is
    lossless. A prefix whose PSNR is not measured yet never counts as reaching the floor: with an
    unmeasured ladder the answer is the most layers within the budget (see the module's note)."""
    lossy = [step for step in ladder if not step.get("lossless")]
    if not lossy:
        return None
    total = max(int(step["bytes"]) for step in ladder)
    budget = MAX_BYTES_FRACTION * total
    within = [step for step in lossy if step["bytes"] <= budget]
    if not within:
        return int(lossy[0]["layers"])
    for step in within:
        if not step_measured(step):
            break  # unknown from here on: the budget's bound
        if step.get("psnr") is not None and float(step["psnr"]) >= MIN_PSNR_DB:
            return int(step["layers"])
    return int(within[-1]["layers"])


def instance_preview_layers(frames: Iterable[Mapping[str, Any]]) -> int | None:
    """The largest of the frames' preview counts (None when no frame has a lossy layer)."""
    counts = [n for f in frames if (n := preview_layers(f["layers"])) is not None]
    return max(counts) if counts else None


class PreviewCache:
    """Preview layer counts per stored blob. A blob key names one stored version (a new master or a
    replacement gets a new key), and only counts from measured ladders are put here (the one change a
    ladder sees under its key is being measured), so an entry never goes stale, on this replica or any
    other."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, int | None] = OrderedDict()

    def get(self, blob_key: str) -> tuple[bool, int | None]:
        if blob_key in self._items:
            self._items.move_to_end(blob_key)
            return True, self._items[blob_key]
        return False, None

    def put(self, blob_key: str, value: int | None) -> None:
        self._items[blob_key] = value
        self._items.move_to_end(blob_key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


_cache = PreviewCache()


async def preview_for_instance(engine: Any, sop_uid: str, blob_key: str) -> int | None:
    """The preview layer count of the instance whose current blob is `blob_key` (None: no master, or no
    lossy layer): from the index's fidelity ladder, then remembered for that blob once measured."""
    known, value = _cache.get(blob_key)
    if known:
        return value
    inst = schema.instances
    q = select(inst.c.fidelity).where((inst.c.sop_uid == sop_uid) & (inst.c.blob_key == blob_key))
    async with engine.connect() as conn:
        fidelity = (await conn.execute(q)).scalar_one_or_none()
    if fidelity is None:  # no master yet: one may appear under a new key, nothing to remember
        return None
    frames = orjson.loads(fidelity)
    value = instance_preview_layers(frames)
    if ladder_measured(frames):  # an unmeasured answer is a bound that the measurement will tighten
        _cache.put(blob_key, value)
    return value


class SeriesPreviewRow(NamedTuple):
    sop_uid: str
    preview_layers: int | None
    master: bool  # the instance has its master
    measured: bool  # and its ladder is measured (else preview_layers is the byte budget's bound)


async def series_preview(engine: Any, study: str, series: str) -> list[SeriesPreviewRow] | None:
    """The preview of each instance of a series, in instance order; None when the series does not
    exist."""
    inst = schema.instances
    q = (
        select(inst.c.sop_uid, inst.c.blob_key, inst.c.fidelity)
        .where((inst.c.study_uid == study) & (inst.c.series_uid == series))
        .order_by(inst.c.instance_number, inst.c.sop_uid)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    if not rows:
        return None
    out = []
    for row in rows:
        known, value = _cache.get(row.blob_key)
        measured = known
        if not known and row.fidelity is not None:
            frames = orjson.loads(row.fidelity)
            value = instance_preview_layers(frames)
            if measured := ladder_measured(frames):
                _cache.put(row.blob_key, value)
        out.append(SeriesPreviewRow(row.sop_uid, value, row.fidelity is not None, measured))
    return out
