"""hyperctl restore: write one disk of one generation to a file."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from hypersdk.access.image import restore_image
from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json, progress_bar
from hypersdk.engine.catalog import prepare_restore
from hypersdk.repository.restore import FORMATS


@dataclass(frozen=True)
class RestoreOptions:
    output: str
    vm: str
    generation: str
    disk: str | None
    to: str
    format: str
    force: bool
    parallel: int
    json: bool
    quiet: bool


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("restore", help="restore a disk of a generation to a file")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", required=True, help="the VM: its locator, id or name")
    p.add_argument("--generation", default="latest", help="generation id or 'latest'")
    p.add_argument("--disk", help="disk key (may be left out when the VM has one disk)")
    p.add_argument("--to", required=True, help="file to write")
    p.add_argument("--format", choices=FORMATS, default="raw")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    opts = RestoreOptions(
        args.output,
        args.vm,
        args.generation,
        args.disk,
        args.to,
        args.format,
        args.force,
        args.parallel,
        args.json,
        args.quiet,
    )
    plan = prepare_restore(
        opts.output, opts.vm, opts.generation, opts.disk, opts.to, force=opts.force
    )
    quiet = opts.quiet or opts.json
    with progress_bar(f"restore {plan.disk}", plan.capacity, enabled=not quiet) as tick:
        result = restore_image(
            plan.repo,
            plan.manifest,
            plan.disk,
            plan.target,
            fmt=opts.format,
            force=opts.force,
            parallel=opts.parallel,
            progress=tick,
        )
    if opts.json:
        print_json(asdict(result))
    elif not opts.quiet:
        print(
            f"restored {result.vm_id} generation {result.generation} disk {result.disk} "
            f"({human_bytes(result.capacity_bytes)}, {result.format}) to {result.path}"
        )
    return 0
