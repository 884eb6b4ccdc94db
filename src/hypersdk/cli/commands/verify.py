"""hyperctl verify: re-read and re-hash everything the selected generations need."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import select_for_verify
from hypersdk.errors import UsageError
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import verify


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check that generations restore byte for byte")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", help="only this VM: its locator, id or name")
    p.add_argument("--generation", help="generation id or 'latest' (needs --vm)")
    p.add_argument("--parallel", type=int, default=4)
    add_password_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    if args.generation and not args.vm:
        raise UsageError("--generation needs --vm")
    repo = Repository.open(args.output, password=password_from(args))
    _, manifests, damaged = select_for_verify(repo, args.vm, args.generation)
    report = verify(repo, manifests, parallel=args.parallel, damaged=damaged)
    if args.json:
        print_json({"ok": report.ok, **asdict(report)})
    else:
        for d in report.damage:
            if not d.disk:
                print(f"DAMAGED {d.vm} generation {d.generation} manifest: {d.problem}")
                continue
            ranges = ", ".join(f"{a}-{b}" for a, b in d.ranges) or "-"
            chunk = f" chunk {d.chunk}" if d.chunk else ""
            print(
                f"DAMAGED {d.vm} generation {d.generation} disk {d.disk}{chunk} "
                f"bytes {ranges}: {d.problem}"
            )
        state = "OK" if report.ok else f"{len(report.damage)} problem(s) found"
        print(
            f"verified {report.generations} generation(s), {report.disks} disk(s), "
            f"{report.chunks_checked} chunk(s): {state}"
        )
    return 0 if report.ok else 1
