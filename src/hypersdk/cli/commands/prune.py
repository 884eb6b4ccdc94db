"""hyperctl prune: keep generations by policy, remove the rest, then gc."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.numbers import duration, int_in
from hypersdk.cli.output import human_bytes, print_json, print_table
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.prune import PruneItem, PruneReport, prune
from hypersdk.engine.retention import Retention
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
MAX_KEEP = 1_000_000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prune",
        help="remove generations a retention policy does not keep, then gc",
        description="Per VM, keep generations by restic's --keep-* rules (times in UTC); "
        "the VM's latest generation and the base of its next incremental always stay.",
    )
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", help="only this VM: its locator, id or name")
    for rule in RULES:
        p.add_argument(
            f"--keep-{rule}",
            type=int_in(0, MAX_KEEP),
            default=0,
            metavar="N",
            help="keep the N newest generations"
            if rule == "last"
            else f"keep the newest generation of each of the last N {rule} periods",
        )
    p.add_argument(
        "--keep-within",
        type=duration,
        default=None,
        metavar="DURATION",
        help="keep every generation within DURATION of the newest (e.g. 7d, 2w, 1y6m, 12h)",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    add_password_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    retention = Retention(
        **{f"keep_{rule}": getattr(args, f"keep_{rule}") for rule in RULES},
        keep_within=args.keep_within or "",
    )
    repo = Repository.open(args.output, password=password_from(args))
    shown = not args.json and sys.stderr.isatty()

    def removed(item: PruneItem) -> None:
        if shown:
            sys.stderr.write(f"\rremoved {item.vm} {item.id}\x1b[K")

    report = prune(
        repo, retention, args.vm, dry_run=args.dry_run, history=History(), on_removed=removed
    )
    if shown:
        sys.stderr.write("\r\x1b[K")
    if args.json:
        print_json(report.to_json())
    else:
        _show(report)
    return 0


def _show(report: PruneReport) -> None:
    if not report.items:
        print("no generations")
        return
    table = Table(box=None)
    for col in ("VM", "GENERATION", "CREATED", "TYPE", "ACTION"):
        table.add_column(col)
    for i in report.items:
        action = ", ".join(i.reasons) if i.keep else "remove"
        table.add_row(i.vm, i.id, i.created[:19].replace("T", " "), i.type, action)
    print_table(table)
    for vm, why in report.skipped.items():
        print(f"skipped {vm}: {why}")
    verb = "would remove" if report.dry_run else "removed"
    print(f"kept {len(report.kept)} generation(s), {verb} {len(report.removed)}")
    if report.gc is not None:
        gc = report.gc
        print(
            f"gc: freed {human_bytes(gc.bytes_removed)} in {gc.chunks_removed} chunk(s); "
            f"{gc.chunks_kept} chunk(s) kept"
        )
