"""hyperctl copy: copy generations to another repository (an offsite copy, 3-2-1)."""

from __future__ import annotations

import argparse

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import human_bytes, print_json, progress_bar
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.copy import copy_generations, select
from hypersdk.repository.keys import ENV_PASSWORD, Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.storage import absolute_location

ENV_FROM_PASSWORD = "HYPERSDK_FROM_PASSWORD"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "copy",
        help="copy generations to another repository (local or s3://, plain or encrypted)",
        description="Sends only the chunks the target lacks, checks each one, writes each "
        "manifest last and can be run again after an interruption. A target that does not "
        "exist is created with the source's block size (encrypted when a password for it "
        "is given).",
    )
    p.add_argument("--from", dest="source", required=True, help="the repository to copy from")
    p.add_argument("--to", dest="target", required=True, help="the repository to copy into")
    p.add_argument("--vm", help="only this VM: its locator, id or name")
    p.add_argument("--generation", help="only this generation (needs --vm)")
    p.add_argument(
        "--from-password-file",
        metavar="FILE",
        help=f"the source's password (else {ENV_FROM_PASSWORD}, else {ENV_PASSWORD}, "
        "else a prompt)",
    )
    add_password_flag(p)  # the target's
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    source_password = Password(file=args.from_password_file, env=ENV_FROM_PASSWORD, prompt=True)
    if not source_password.given() and not args.from_password_file:
        source_password = Password(prompt=True)  # one password for both is common
    source = Repository.open(absolute_location(args.source), password=source_password)
    target = Repository.open_or_init(
        absolute_location(args.target),
        block_size=source.config.block_size,
        password=password_from(args),
    )
    manifests = select(source, args.vm, args.generation)
    bs = source.config.block_size
    total = sum((d.blocks - d.zero_blocks) * bs for m in manifests for d in m.disks)
    quiet = args.quiet or args.json
    with progress_bar("copy", total, enabled=not quiet) as tick:
        report = copy_generations(source, target, manifests, progress=tick)
    if args.json:
        print_json(report.to_json())
    elif not args.quiet:
        doc = report.to_json()
        print(
            f"copied {doc['copied']} generation(s) to {target.location} "
            f"({doc['present']} were there already): sent {doc['chunks_sent']} chunk(s), "
            f"{human_bytes(doc['bytes_sent'])}; {doc['chunks_present']} chunk(s) were present"
        )
    return 0
