"""`dicomweb lifecycle` (a policy's dry run, or `--apply`) and `dicomweb qa STUDY_UID`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from storage import PolicyError, Settings, load_policy


class LifecycleCommandError(Exception):
    """str() is the one line printed; exit status 1."""


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def dry_run_table(summary: dict[str, Any]) -> str:
    """The dry run as a table: one line per rule."""
    head = (
        "rule",
        "action",
        "studies",
        "instances",
        "now",
        "after",
        "saving",
        "per month",
        "worst PSNR",
        "max error",
    )
    rows = [head]
    for r in summary["rules"]:
        rows.append(
            (
                r["name"],
                r["action"],
                str(r["studies"]),
                str(r["instances"]),
                _size(r["bytes_now"]),
                _size(r["bytes_after"]),
                _size(r["saving_bytes"]),
                f"{r['saving_per_month']:.2f} {summary['currency']}",
                "-" if r["worst_psnr_db"] is None else f"{r['worst_psnr_db']:.1f} dB",
                "-" if r["worst_max_error"] is None else str(r["worst_max_error"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    for r in summary["rules"]:
        if r.get("unmeasured_instances"):
            lines.append(
                f"rule {r['name']!r}: {r['unmeasured_instances']} instance(s) skipped, their masters' "
                "fidelity ladders are not measured yet (a later run takes them)"
            )
    return "\n".join([f"policy {summary['policy']} (dry run: nothing changed)", *lines])


async def run_lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from dicomweb.audit import AuditLog, lifecycle_record
    from dicomweb.cli import open_archive

    path = args.policy or settings.lifecycle_policy
    if not path:
        raise LifecycleCommandError("no policy: give --policy FILE or set DICOMWEB_LIFECYCLE")
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise LifecycleCommandError(str(exc)) from None
    archive = await open_archive(settings, start_masters=False, parser_processes=1)
    audit = AuditLog(settings.audit_log) if settings.audit_log and args.apply else None
    try:
        plan = await archive.lifecycle_plan(policy, ignore_study_date=args.ignore_study_date)
        summary = plan.summary(settings)
        if not args.apply:
            print(
                orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode()
                if args.json
                else dry_run_table(summary)
            )
            return 0
        who = f"dicomweb lifecycle ({policy.name})"
        on_change: Callable[[dict[str, Any]], None] | None = (
            (lambda change: audit.write(lifecycle_record(change, who))) if audit is not None else None
        )
        total = sum(len(r.instances) if r.rule.action == "lossy" else r.tier_instances for r in plan.rules)
        with tqdm(total=total, unit="instance", disable=args.quiet) as bar:
            result = await archive.apply_lifecycle_plan(plan, on_change=on_change, on_progress=bar.update)
    finally:
        if audit is not None:
            audit.close()
        await archive.close()
    report = {
        "derived": result.derived,
        "skipped": result.skipped,
        "bytes_before": result.bytes_before,
        "bytes_after": result.bytes_after,
        "moved_instances": result.moved_instances,
        "moved_bytes": result.moved_bytes,
        "warnings": result.warnings,
    }
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"{result.derived} instance(s) derived "
            f"({_size(result.bytes_before)} -> {_size(result.bytes_after)}), "
            f"{result.skipped} left as they were (changed meanwhile), "
            f"{result.moved_instances} moved to the cold tier ({_size(result.moved_bytes)})"
        )
        for warning in result.warnings:
            print(f"warning: {warning}")
    return 0


async def run_qa(args: argparse.Namespace, settings: Settings) -> int:
    from dicomweb.cli import open_archive

    archive = await open_archive(settings, start_masters=False, parser_processes=1)
    try:
        frames = await archive.study_qa(args.study)
    finally:
        await archive.close()
    if args.json:
        print(orjson.dumps({"study": args.study, "frames": frames}, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not frames:
        print(f"study {args.study}: no lossy derivation")
        return 0
    print(f"study {args.study}: {len({f['instance'] for f in frames})} derived instance(s)")
    print(
        f"{'derived instance':64}  {'frame':>5}  {'layers':>6}  {'ratio':>7}  {'PSNR dB':>8}  "
        f"{'max err':>7}  {'SSIM':>8}"
    )
    for f in frames:
        psnr = "identical" if f["psnr_db"] is None else f"{f['psnr_db']:.2f}"
        print(
            f"{f['instance']:64}  {f['frame']:>5}  {f['layers']:>6}  {f['ratio']:>7.2f}  {psnr:>8}  "
            f"{f['max_error']:>7}  {f['ssim']:>8.5f}"
        )
    return 0


def add_parsers(
    sub: argparse._SubParsersAction,
    storage_options: Callable[[argparse.ArgumentParser], None],
    lifecycle: Callable[[argparse.Namespace], int],
    qa: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser(
        "lifecycle",
        help="dry-run (or --apply) a lifecycle policy: lossy archival, cold tier",
        description="Show what each rule of a lifecycle policy would do (studies, instances, bytes now "
        "and after, the saving, the worst PSNR and maximum error it would leave), or carry it out with "
        "--apply (resumable: run it again after an interruption). Exit status 1 for a bad policy.",
    )
    p.add_argument("--policy", metavar="FILE", help="the TOML policy (env DICOMWEB_LIFECYCLE)")
    p.add_argument("--apply", action="store_true", help="carry the policy out (default: dry run)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--ignore-study-date",
        action="store_true",
        help="match rules without their older_than_days (to see what a policy does to a test corpus)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    storage_options(p)
    p.set_defaults(func=lifecycle)
    q = sub.add_parser(
        "qa",
        help="fidelity of a study's lossy derived frames against their originals",
        description="Per derived instance and frame of a study: layers kept, ratio, PSNR, maximum "
        "absolute error and SSIM against the original, measured before the original was deleted.",
    )
    q.add_argument("study", metavar="STUDY_UID")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    storage_options(q)
    q.set_defaults(func=qa)


def run(coroutine: Callable[[], Any]) -> int:
    try:
        return int(asyncio.run(coroutine()))
    except LifecycleCommandError as exc:
        from dicomweb.cli import CommandError

        raise CommandError(str(exc)) from None
