"""hyperctl gc: remove chunks no generation references and leftovers of interrupted runs."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gc", help="remove unreferenced chunks and leftovers")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--dry-run", action="store_true", help="only say what would go")
    add_password_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    repo = Repository.open(args.output, password=password_from(args))
    shown = not args.json and sys.stderr.isatty()

    def progress(phase: str, done: int, total: int) -> None:
        what = "marking generations" if phase == "mark" else "sweeping chunk folders"
        sys.stderr.write(f"\rgc: {what} {done}/{total}\x1b[K")

    try:
        report = collect_garbage(repo, dry_run=args.dry_run, progress=progress if shown else None)
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")
    if args.json:
        print_json({"dry_run": args.dry_run, **asdict(report)})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(
            f"{verb} {report.chunks_removed} chunk(s) ({human_bytes(report.bytes_removed)}), "
            f"{report.indexes_removed} orphan index folder(s), "
            f"{report.temp_files_removed} temp file(s); kept {report.chunks_kept} chunk(s)"
        )
    return 0
