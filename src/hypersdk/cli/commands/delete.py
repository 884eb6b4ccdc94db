"""hyperctl delete: forget one generation (its data goes at the next gc)."""

from __future__ import annotations

import argparse

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import delete_generation
from hypersdk.repository.repository import Repository


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("delete", help="delete a generation; other generations stay whole")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", required=True, help="the VM: its locator, id or name")
    p.add_argument("--generation", required=True, help="generation id")
    add_password_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    m = delete_generation(
        Repository.open(args.output, password=password_from(args)), args.vm, args.generation
    )
    if args.json:
        print_json({"deleted": m.id, "vm": m.vm_id})
    else:
        print(f"deleted generation {m.id} of {m.vm_id}; run 'hyperctl gc' to free its space")
    return 0
