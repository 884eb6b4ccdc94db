"""hyperctl restore: write one disk of one generation to a new file, or into an existing
disk writing only what differs (``--since F`` or ``--compare``)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from hypersdk.access.image import restore_image
from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json, progress_bar
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import prepare_restore
from hypersdk.engine.restore_into import check_mode, prepare_into, run_into
from hypersdk.repository.keys import Password
from hypersdk.repository.restore import FORMATS


@dataclass(frozen=True)
class RestoreOptions:
    output: str
    vm: str
    generation: str
    disk: str | None
    to: str
    format: str | None
    force: bool
    since: str | None
    compare: bool
    parallel: int
    json: bool
    quiet: bool


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("restore", help="restore a disk of a generation to a file")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", required=True, help="the VM: its locator, id or name")
    p.add_argument("--generation", default="latest", help="generation id or 'latest'")
    p.add_argument("--disk", help="disk key (may be left out when the VM has one disk)")
    p.add_argument(
        "--to",
        required=True,
        help="file to write; with --since/--compare an existing raw file, block device, "
        "qcow2 file or qemu: locator",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="format of a new file (default raw); with --since/--compare detected",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument(
        "--since",
        metavar="F",
        help="the target holds generation F: write only the blocks that differ from it",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="read the target, write the blocks that differ from the generation",
    )
    p.add_argument("--parallel", type=int, default=4)
    add_password_flag(p)
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
        args.since,
        args.compare,
        args.parallel,
        args.json,
        args.quiet,
    )
    check_mode(opts.since, opts.compare)
    if opts.since is not None or opts.compare:
        return _run_into(opts, password_from(args))
    plan = prepare_restore(
        opts.output,
        opts.vm,
        opts.generation,
        opts.disk,
        opts.to,
        force=opts.force,
        password=password_from(args),
    )
    quiet = opts.quiet or opts.json
    with progress_bar(f"restore {plan.disk}", plan.capacity, enabled=not quiet) as tick:
        result = restore_image(
            plan.repo,
            plan.manifest,
            plan.disk,
            plan.target,
            fmt=opts.format or "raw",
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


def _run_into(opts: RestoreOptions, password: Password) -> int:
    job = prepare_into(
        opts.output,
        opts.vm,
        opts.generation,
        opts.disk,
        opts.to,
        since=opts.since,
        compare=opts.compare,
        fmt=opts.format,
        password=password,
    )
    quiet = opts.quiet or opts.json
    what = "compare" if opts.compare else "restore changes"
    total = job.plan.progress_total
    with progress_bar(f"{what} {job.plan.disk}", total, enabled=not quiet) as tick:
        result = run_into(job, parallel=opts.parallel, progress=tick)
    if opts.json:
        print_json(result.to_json())
    elif not opts.quiet:
        base = f"since {result.since}" if result.since else "by comparing"
        print(
            f"restored {result.vm_id} generation {result.generation} disk {result.disk} "
            f"into {result.target} {base}: {result.blocks_changed} of "
            f"{result.blocks_total} blocks changed, {human_bytes(result.bytes_written)} "
            f"written, {human_bytes(result.bytes_read_repository)} read from the "
            f"repository, {human_bytes(result.bytes_read_target)} from the target "
            f"in {result.seconds:.1f} s"
        )
    return 0
