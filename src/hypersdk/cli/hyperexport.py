"""hyperexport: export a VM's disks into a repository, full or incremental.

hyperexport --vm VM --output REPO [--incremental] [--force-full] [--json]
hyperexport --vm VM --incremental-info [--output REPO]
hyperexport --vm VM --enable-cbt | --disable-cbt
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

from hypersdk import __version__
from hypersdk.cli.info import print_analysis
from hypersdk.cli.numbers import float_in, int_in, size_in
from hypersdk.cli.output import ByteProgress, OneLineParser, fail, human_bytes, print_json
from hypersdk.engine.analysis import analyze
from hypersdk.engine.export import ExportReport, ExportRequest, run_export
from hypersdk.errors import ExportCancelled, UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.factory import QEMU_PREFIXES, open_provider
from hypersdk.repository.repository import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Repository,
    check_block_size,
)
from hypersdk.state.history import History

PROG = "hyperexport"
MAX_AGE_DAYS = 36500.0


@dataclass(frozen=True)
class Options:
    vm: str
    output: str | None
    action: str  # "export", "info", "enable-cbt", "disable-cbt"
    incremental: bool
    force_full: bool
    compression: str | None  # None: the repository's setting (zstd for a new one)
    compression_level: int | None
    block_size: int | None  # None: 1 MiB for a new repository
    parallel: int
    max_age: timedelta
    json: bool
    quiet: bool
    vsphere: VsphereSettings | None = None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument(
        "--vm",
        required=True,
        help="a vSphere inventory path (/Datacenter/vm/name), qemu:/path/to/qmp.sock "
        "or qcow2:/path/to/disk.qcow2",
    )
    p.add_argument("--output", help="the repository folder (created on first export)")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="export only changed blocks when possible (else full, with the reason)",
    )
    p.add_argument("--force-full", action="store_true", help="export every block")
    p.add_argument(
        "--incremental-info",
        action="store_true",
        help="show CBT state, last export and what an incremental would read",
    )
    p.add_argument("--enable-cbt", action="store_true", help="turn on changed block tracking")
    p.add_argument("--disable-cbt", action="store_true", help="turn off changed block tracking")
    p.add_argument(
        "--compress",
        help="zstd[:LEVEL], lz4 or none for new chunks (default: the repository's, zstd:1)",
    )
    p.add_argument(
        "--block-size",
        type=size_in(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE),
        help="block size of a NEW repository: a power of two from 64K to 16M (default 1M)",
    )
    p.add_argument(
        "--parallel", type=int_in(1, 64), default=4, help="reader threads, 1 to 64 (default 4)"
    )
    p.add_argument(
        "--max-incremental-age",
        # timedelta refuses more than 999999999 days; a century is plenty.
        type=float_in(0, MAX_AGE_DAYS, low_open=True),
        default=7.0,
        metavar="DAYS",
        help="older last exports make a full export (default 7)",
    )
    p.add_argument(
        "--server",
        help="vSphere server, https://host/sdk (else HYPERSDK_VSPHERE_URL or GOVC_URL); the "
        "password comes from HYPERSDK_VSPHERE_PASSWORD, GOVC_PASSWORD or a prompt",
    )
    p.add_argument(
        "--username", help="vSphere user (else HYPERSDK_VSPHERE_USERNAME or GOVC_USERNAME)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="do not verify the vSphere TLS certificate (else GOVC_INSECURE=1)",
    )
    p.add_argument(
        "--ca-file",
        help="PEM file(s), ':'-separated, trusted for vSphere besides the system store "
        "(else HYPERSDK_VSPHERE_CA_FILE or GOVC_TLS_CA_CERTS)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return p


def vsphere_settings(args: argparse.Namespace) -> VsphereSettings | None:
    """Connection settings for a vSphere ``--vm`` (None for QEMU locators or no server).
    The password is never a flag: environment, or a prompt when stdin is a terminal."""
    if args.vm.startswith(QEMU_PREFIXES):
        return None
    settings = VsphereSettings.resolve(
        server=args.server, username=args.username, insecure=args.insecure, ca_file=args.ca_file
    )
    if settings is None or settings.password:
        return settings
    if not sys.stdin.isatty():
        raise UsageError(
            "no vSphere password: set HYPERSDK_VSPHERE_PASSWORD or GOVC_PASSWORD "
            "(a prompt needs a terminal)"
        )
    password = getpass.getpass(f"Password for {settings.username} on {settings.server}: ")
    return VsphereSettings.resolve(
        server=args.server,
        username=args.username,
        password=password,
        insecure=args.insecure,
        ca_file=args.ca_file,
    )


def to_options(args: argparse.Namespace) -> Options:
    actions = [
        a
        for a, on in (
            ("info", args.incremental_info),
            ("enable-cbt", args.enable_cbt),
            ("disable-cbt", args.disable_cbt),
        )
        if on
    ]
    if len(actions) > 1:
        raise UsageError("--incremental-info, --enable-cbt and --disable-cbt exclude each other")
    action = actions[0] if actions else "export"
    if action == "export" and not args.output:
        raise UsageError("an export needs --output (the repository folder)")
    comp, _, level = (args.compress or "").partition(":")
    if args.compress is not None and comp.lower() not in ("zstd", "lz4", "none"):
        raise UsageError(f"unknown compression {comp!r}: choose zstd, lz4 or none")
    if level and (comp.lower() != "zstd" or not level.isdigit() or not 1 <= int(level) <= 22):
        raise UsageError(f"--compress {args.compress!r}: only zstd takes a level, from 1 to 22")
    return Options(
        vm=args.vm,
        output=args.output,
        action=action,
        incremental=args.incremental,
        force_full=args.force_full,
        compression=comp.lower() if args.compress is not None else None,
        compression_level=int(level) if level else None,
        block_size=(check_block_size(args.block_size) if args.block_size is not None else None),
        parallel=args.parallel,
        max_age=timedelta(days=args.max_incremental_age),
        json=args.json,
        quiet=args.quiet,
        vsphere=vsphere_settings(args),
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise ExportCancelled("terminated; nothing was committed")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Providers report what the user should know (a leftover snapshot removed) as warnings.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    try:
        return run(to_options(args))
    except (Exception, KeyboardInterrupt) as err:
        return fail(PROG, err, as_json=args.json)


def run(opts: Options) -> int:
    history = History()
    provider = open_provider(opts.vm, opts.vsphere)
    try:
        if opts.action == "enable-cbt":
            provider.enable_cbt()
            return _say(
                opts, {"success": True, "message": f"CBT enabled successfully for {opts.vm}"}
            )
        if opts.action == "disable-cbt":
            provider.disable_cbt()
            return _say(
                opts, {"success": True, "message": f"CBT disabled successfully for {opts.vm}"}
            )
        if opts.action == "info":
            repo = Repository.open(opts.output) if opts.output else None
            analysis = analyze(provider, history, repo=repo, max_age=opts.max_age)
            print_analysis(analysis, as_json=opts.json)
            return 0
        return _export(opts, provider, history)
    finally:
        provider.close()


def _say(opts: Options, doc: dict[str, object]) -> int:
    if opts.json:
        print_json(doc)
    elif not opts.quiet:
        print(doc["message"])
    return 0


def _export(opts: Options, provider: Provider, history: History) -> int:
    bar = ByteProgress(enabled=not (opts.quiet or opts.json))

    def on_plan(mode: str, reason: str, total: int) -> None:
        if not (opts.quiet or opts.json):
            sys.stderr.write(f"{mode} export: {reason}\n")
        bar.start(f"{mode} export", total)

    request = ExportRequest(
        output=str(opts.output),
        incremental=opts.incremental,
        force_full=opts.force_full,
        compression=opts.compression,
        compression_level=opts.compression_level,
        block_size=opts.block_size,
        parallel=opts.parallel,
        max_age=opts.max_age,
        on_plan=on_plan,
        progress=bar.advance,
    )
    try:
        report = run_export(provider, request, history)
    finally:
        bar.close()
    if opts.json:
        print_json(report.to_json())
    elif not opts.quiet:
        _summary(report)
    return 0


def _summary(r: ExportReport) -> None:
    speed = r.bytes_read / r.duration_s / 2**20 if r.duration_s else 0.0
    print(
        f"{r.mode} export of {r.vm_name} committed as generation {r.generation}: "
        f"read {human_bytes(r.bytes_read)}, stored {human_bytes(r.bytes_stored)} "
        f"in {r.duration_s:.1f} s ({speed:.0f} MiB/s)"
    )


if __name__ == "__main__":
    sys.exit(main())
