"""hyperctl generations: list the generations in a repository."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import list_generations
from hypersdk.repository.repository import Repository


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generations", help="list the generations in a repository")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", help="only this VM: its locator, id or name")
    add_password_flag(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, oldest first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    gens = list_generations(Repository.open(args.output, password=password_from(args)), args.vm)
    if args.json:
        print_json([m.summary() for m in gens])
        return 0
    if not gens:
        print("no generations")
        return 0
    table = Table(box=None)
    for col in ("VM", "GENERATION", "CREATED", "TYPE", "SIZE", "READ", "STORED"):
        table.add_column(col, justify="right" if col in ("SIZE", "READ", "STORED") else "left")
    for m in gens:
        table.add_row(
            m.vm_id,
            m.id,
            m.created[:19].replace("T", " "),
            m.type,
            human_bytes(m.total_size),
            human_bytes(m.stats.get("bytes_read", 0)),
            human_bytes(m.stats.get("bytes_stored", 0)),
        )
    Console().print(table)
    return 0
