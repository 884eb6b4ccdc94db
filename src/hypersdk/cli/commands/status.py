"""hyperctl status: each VM's last good generation and its age; exit 1 when one is stale.

Made for monitoring: a cron job or a check in Nagios' style runs it after the backup
window and alerts on exit 1, so a VM whose backups silently stopped is noticed.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.numbers import duration
from hypersdk.cli.output import print_json, print_table
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import list_generations, summaries
from hypersdk.engine.retention import subtract
from hypersdk.repository.repository import Repository

DEFAULT_MAX_AGE = "1d"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="each VM's last good generation and its age; exit 1 if one is too old",
    )
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument(
        "--max-age",
        type=duration,
        default=None,
        metavar="DURATION",
        help=f"a VM whose last generation is older is stale (default {DEFAULT_MAX_AGE}; "
        "e.g. 26h, 2d, 1w)",
    )
    add_password_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def age_text(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    max_age = args.max_age or DEFAULT_MAX_AGE
    now = datetime.now(UTC)
    cutoff = subtract(now, max_age)
    gens = list_generations(Repository.open(args.output, password=password_from(args)))
    latest: dict[str, dict[str, Any]] = {}
    for row in summaries(gens):  # oldest first: the last one of a VM wins
        latest[row["vm"]] = row
    vms = []
    for vm, row in sorted(latest.items()):
        created = datetime.fromisoformat(row["created"].replace("Z", "+00:00"))
        vms.append(
            {
                "vm": vm,
                "vm_name": row["vm_name"],
                "locator": row["locator"],
                "generation": row["id"],
                "type": row["type"],
                "created": row["created"],
                "age_s": round((now - created).total_seconds()),
                "stale": created < cutoff,
                "suspect": row["suspect"],
            }
        )
    stale = [v for v in vms if v["stale"]]
    if args.json:
        print_json({"max_age": max_age, "vms": vms, "stale": len(stale)})
    elif not vms:
        print("no generations")
    else:
        table = Table(box=None)
        for col in ("VM", "NAME", "LAST GENERATION", "TYPE", "AGE", "STATE"):
            table.add_column(col)
        for v in vms:
            state = "STALE" if v["stale"] else "ok"
            if v["suspect"]:
                state += ", SUSPECT"  # a later audit found CBT misses: not a good one
            table.add_row(
                v["vm"], v["vm_name"], v["generation"], v["type"], age_text(v["age_s"]), state
            )
        print_table(table)
        if stale:
            print(f"{len(stale)} VM(s) have no generation newer than {max_age}")
    return 1 if stale else 0
