"""`dicomweb stats`: what the archive holds per modality and per month, as received against as stored, what
that costs a month and over five years (storage/stats.py), as tables; `--json` prints what GET {root}/stats
answers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

import orjson

from storage import Settings


def human_bytes(n: float) -> str:
    """Decimal units, as storage is sold: 1.5 GB = 1.5 x 10^9 bytes."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def money(amount: float, currency: str) -> str:
    # Small archives cost fractions of a cent a month: show enough digits to see them.
    return f"{amount:,.2f} {currency}" if abs(amount) >= 1 or amount == 0 else f"{amount:.6f} {currency}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}:1"


COLUMNS = (
    ("studies", ">8", str),
    ("instances", ">10", str),
    ("received", ">10", lambda r: human_bytes(r["received_bytes"])),
    ("stored", ">10", lambda r: human_bytes(r["stored_bytes"])),
    ("uncompressed", ">13", lambda r: human_bytes(r["uncompressed_bytes"])),
    ("recv:stored", ">12", lambda r: ratio(r["received_ratio"])),
    ("uncomp:stored", ">14", lambda r: ratio(r["uncompressed_ratio"])),
    ("hot", ">10", lambda r: human_bytes(r["hot_bytes"])),
    ("cold", ">10", lambda r: human_bytes(r["cold_bytes"])),
)


def _table(title: str, key: str, rows: list[dict[str, Any]], total: dict[str, Any]) -> list[str]:
    head = f"{title:<14}" + "".join(f"{name:{align}}" for name, align, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in [*rows, {key: "total", **total}]:
        label = row[key] or "(none)"
        cells = "".join(
            f"{(fmt(row[name]) if fmt is str else fmt(row)):{align}}" for name, align, fmt in COLUMNS
        )
        lines.append(f"{label:<14}{cells}")
    return lines


def report(doc: dict[str, Any]) -> str:
    """The readable form of GET {root}/stats."""
    cur, m = doc["currency"], doc["money"]
    prices = doc["prices"]
    lines = _table("modality", "modality", doc["by_modality"], doc["totals"])
    lines += ["", *_table("month", "month", doc["by_month"], doc["totals"])]
    lines += [
        "",
        (
            f"Storage per month at {prices['per_tb_month']:g} {cur}/TB-month "
            f"(cold tier {prices['cold_per_tb_month']:g}; TB = 10^12 bytes):"
        ),
        f"  as received      {money(m['per_month_as_received'], cur)}",
        f"  as stored now    {money(m['per_month_as_stored'], cur)}",
        f"  uncompressed     {money(m['per_month_uncompressed'], cur)}",
        f"  saving           {money(m['saving_per_month'], cur)}"
        + ("" if m["saving_percent"] is None else f" ({m['saving_percent']:.1f} %)"),
        f"  prices: {prices['source']}",
        "",
        f"Five years at {doc['yearly_growth'] * 100:g} % growth a year:",
        (
            f"{'year':<6}{'received':>12}{'stored':>12}{'as received':>22}{'as stored':>22}{'saving':>22}"
            f"{'cumulative':>22}"
        ),
    ]
    for y in doc["projection"]:
        lines.append(
            f"{y['year']:<6}{human_bytes(y['received_bytes']):>12}{human_bytes(y['stored_bytes']):>12}"
            f"{money(y['cost_as_received'], cur):>22}{money(y['cost_as_stored'], cur):>22}"
            f"{money(y['saving'], cur):>22}{money(y['cumulative_saving'], cur):>22}"
        )
    caches = doc["caches"]
    lines += [
        "",
        f"Caches (disk not counted above): {human_bytes(caches['bytes'])}"
        + "".join(f"; {c['name']} ({c['folder']}) {human_bytes(c['bytes'])}" for c in caches["folders"]),
    ]
    return "\n".join(lines)


async def _stats(settings: Settings) -> dict[str, Any]:
    from dicomweb.cli import open_archive

    archive = await open_archive(settings, start_masters=False, parser_processes=1)
    try:
        return (await archive.stats()).to_json()
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    doc = asyncio.run(_stats(settings))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
    else:
        print(report(doc))
    return 0


def add_parser(
    sub: argparse._SubParsersAction,
    storage_options: Callable[[argparse.ArgumentParser], None],
    func: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser(
        "stats",
        help="bytes as received, stored and uncompressed per modality and month, and what they cost",
        description="What the archive holds per modality and per month (of StudyDate, else of receipt): "
        "studies, instances, bytes as received, as stored now and uncompressed, the ratios, bytes per "
        "tier; what storing it costs a month as received and as stored "
        "(DICOMWEB_PRICE_PER_TB_MONTH, DICOMWEB_COLD_PRICE_PER_TB_MONTH, DICOMWEB_CURRENCY), and over "
        "five years at DICOMWEB_YEARLY_GROWTH_PERCENT.",
    )
    storage_options(p)
    p.add_argument("--json", action="store_true", help="print the JSON GET {root}/stats answers")
    p.set_defaults(func=func)
