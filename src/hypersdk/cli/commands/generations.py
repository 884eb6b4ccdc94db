"""hyperctl generations: list the generations in a repository."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json, print_table
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import list_generations, summaries
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
        print_json(summaries(gens))
        return 0
    if not gens:
        print("no generations")
        return 0
    rows = summaries(gens)
    marks = [_cbt_mark(m.audit, suspect=row["suspect"]) for m, row in zip(gens, rows, strict=True)]
    columns = ["VM", "GENERATION", "CREATED", "TYPE", "SIZE", "READ", "STORED"]
    if any(marks):
        columns.append("CBT")  # only when an audit was made: the table stays narrow
    table = Table(box=None)
    for col in columns:
        table.add_column(col, justify="right" if col in ("SIZE", "READ", "STORED") else "left")
    for m, mark in zip(gens, marks, strict=True):
        cells = [
            m.vm_id,
            m.id,
            m.created[:19].replace("T", " "),
            m.type,
            human_bytes(m.total_size),
            human_bytes(m.stats.get("bytes_read", 0)),
            human_bytes(m.stats.get("bytes_stored", 0)),
        ]
        table.add_row(*cells, *([mark] if any(marks) else []))
    print_table(table)
    return 0


def _cbt_mark(audit: dict[str, Any] | None, *, suspect: bool) -> str:
    """A word, not a colour: SUSPECT when a later audit found CBT misses since this
    generation; how this generation's own audit ended, when it made one."""
    marks = ["SUSPECT"] if suspect else []
    if audit and audit.get("performed"):
        marks.append("audit-clean" if audit.get("clean") else "audit-misses")
    return ", ".join(marks)
