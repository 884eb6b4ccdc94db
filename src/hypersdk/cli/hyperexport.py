"""hyperexport: export a VM's disks into a repository, full or incremental.

hyperexport --vm VM --output REPO [--incremental] [--force-full] [--audit] [--json]
hyperexport --vms FILE --output REPO [--concurrency N] [--incremental] [--json]
hyperexport --vm VM --incremental-info [--output REPO]
hyperexport --vm VM --enable-cbt | --disable-cbt

VM: /Datacenter/vm/name, qemu:/path/qmp.sock, qcow2:/path/disk.qcow2 or libvirt:DOMAIN
(with --connect URI, else LIBVIRT_DEFAULT_URI, else qemu:///system)
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType

from hypersdk import __version__
from hypersdk.cli.info import print_analysis
from hypersdk.cli.many import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    MIN_CONCURRENCY,
    ManyOptions,
    read_vm_list,
    run_many,
)
from hypersdk.cli.numbers import float_in, int_in, size_in
from hypersdk.cli.output import ByteProgress, OneLineParser, fail, human_bytes, print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.analysis import analyze
from hypersdk.engine.export import ExportReport, run_export
from hypersdk.engine.request import (
    DEFAULT_MAX_AGE_DAYS,
    DEFAULT_PARALLEL,
    MAX_AGE_DAYS,
    MAX_LEVEL,
    MAX_PARALLEL,
    MIN_LEVEL,
    MIN_PARALLEL,
    ExportHooks,
    ExportRequest,
    InvalidField,
)
from hypersdk.errors import ExportCancelled, UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.factory import LIBVIRT_PREFIX, is_qemu_locator, open_provider
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Repository
from hypersdk.repository.storage import absolute_location
from hypersdk.state.history import History

PROG = "hyperexport"

# The flag that sets each field of an ExportRequest, to word its errors as the user typed.
FLAGS = {
    "output": "--output",
    "incremental": "--incremental",
    "force_full": "--force-full",
    "audit": "--audit",
    "compression": "--compress",
    "compression_level": "--compress",
    "block_size": "--block-size",
    "parallel": "--parallel",
    "max_incremental_age_days": "--max-incremental-age",
}


@dataclass(frozen=True)
class Options:
    """The command: what to do with which VM, and how to report it. An export's own
    parameters are its ``request``, checked when it was built."""

    vm: str
    output: str | None
    action: str  # "export", "info", "enable-cbt", "disable-cbt"
    request: ExportRequest | None  # for "export" only
    max_age: timedelta  # what --incremental-info calls too old
    json: bool
    quiet: bool
    vsphere: VsphereSettings | None = None
    # An encrypted repository's password; asked for only when one is needed.
    password: Password = field(default_factory=Password)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--vm",
        help="a vSphere inventory path (/Datacenter/vm/name), qemu:/path/to/qmp.sock, "
        "qcow2:/path/to/disk.qcow2 or libvirt:DOMAIN",
    )
    which.add_argument(
        "--vms",
        metavar="FILE",
        help="export many VMs: FILE has one locator a line (as --vm; blank lines and # "
        "comments skipped; - for stdin)",
    )
    p.add_argument(
        "--connect",
        metavar="URI",
        help="libvirt connection for libvirt:DOMAIN locators (else LIBVIRT_DEFAULT_URI, "
        "else qemu:///system)",
    )
    p.add_argument(
        "--concurrency",
        type=int_in(MIN_CONCURRENCY, MAX_CONCURRENCY),
        metavar="N",
        help=f"with --vms: exports at once, {MIN_CONCURRENCY} to {MAX_CONCURRENCY} "
        f"(default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--output", help="the repository folder (created on first export)")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="export only changed blocks when possible (else full, with the reason)",
    )
    p.add_argument("--force-full", action="store_true", help="export every block")
    p.add_argument(
        "--audit",
        action="store_true",
        help="read every block (as --force-full) and report the blocks CBT missed since "
        "the previous generation",
    )
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
        "--parallel",
        type=int_in(MIN_PARALLEL, MAX_PARALLEL),
        default=DEFAULT_PARALLEL,
        help=f"reader threads, {MIN_PARALLEL} to {MAX_PARALLEL} (default {DEFAULT_PARALLEL})",
    )
    p.add_argument(
        "--max-incremental-age",
        type=float_in(0, MAX_AGE_DAYS, low_open=True),
        default=DEFAULT_MAX_AGE_DAYS,
        metavar="DAYS",
        help=f"older last exports make a full export (default {DEFAULT_MAX_AGE_DAYS:g})",
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
    add_password_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return p


def vsphere_settings(args: argparse.Namespace, locators: Sequence[str]) -> VsphereSettings | None:
    """Connection settings for vSphere VMs (None when all are QEMU or libvirt locators,
    or no server). The password is never a flag: environment, or a prompt on a terminal."""
    if all(is_qemu_locator(x) or x.startswith(LIBVIRT_PREFIX) for x in locators):
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


def to_options(args: argparse.Namespace) -> Options | ManyOptions:
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
    if args.vms is not None:
        return many_options(args, actions)
    if args.concurrency is not None:
        raise UsageError("--concurrency goes with --vms (one VM is one export)")
    if action == "export" and not args.output:
        raise UsageError("an export needs --output (the repository folder)")
    vm = args.vm
    if args.connect is not None:
        if not vm.strip().startswith(LIBVIRT_PREFIX):
            raise UsageError("--connect is for a libvirt domain (--vm libvirt:DOMAIN)")
        from hypersdk.providers.libvirt import with_connect

        vm = with_connect(vm, args.connect)  # recorded with the locator
    return Options(
        vm=vm,
        output=args.output,
        action=action,
        request=export_request(args) if action == "export" else None,
        max_age=timedelta(days=args.max_incremental_age),
        json=args.json,
        quiet=args.quiet,
        vsphere=vsphere_settings(args, [args.vm]),
        password=password_from(args),
    )


def many_options(args: argparse.Namespace, actions: list[str]) -> ManyOptions:
    """``--vms``: exports only. The CBT and info actions stay one VM at a time, where
    their output (and a failure) is about one VM."""
    if actions:
        raise UsageError(
            f"--{actions[0].replace('info', 'incremental-info')} works on one --vm, not --vms"
        )
    if not args.output:
        raise UsageError("an export needs --output (the repository folder)")
    request = export_request(args)
    locators = read_vm_list(args.vms)
    if args.connect is not None:
        from hypersdk.providers.libvirt import with_connect

        locators = tuple(
            with_connect(x, args.connect) if x.strip().startswith(LIBVIRT_PREFIX) else x
            for x in locators
        )
    return ManyOptions(
        locators=locators,
        request=request,
        concurrency=args.concurrency or DEFAULT_CONCURRENCY,
        json=args.json,
        quiet=args.quiet,
        vsphere=vsphere_settings(args, locators),
        password=password_from(args),
    )


def export_request(args: argparse.Namespace) -> ExportRequest:
    """The flags as one ExportRequest; a field it refuses is reported by its flag."""
    compression: str | None = None
    level: int | None = None
    if args.compress is not None:
        name, colon, text = args.compress.partition(":")
        compression = name.strip().lower()
        if colon:
            if not text.strip().isdigit():
                raise UsageError(
                    f"--compress {args.compress!r}: the level is a whole number "
                    f"from {MIN_LEVEL} to {MAX_LEVEL}"
                )
            level = int(text)
    try:
        return ExportRequest(
            output=absolute_location(args.output),
            incremental=args.incremental,
            force_full=args.force_full,
            audit=args.audit,
            compression=compression,
            compression_level=level,
            block_size=args.block_size,
            parallel=args.parallel,
            max_incremental_age_days=args.max_incremental_age,
        )
    except InvalidField as err:
        if err.field.startswith("compression"):
            # One flag sets two fields: quote what was typed, then which part is wrong.
            part = "the level" if err.field == "compression_level" else "the method"
            raise UsageError(f"--compress {args.compress!r}: {part} {err.detail}") from err
        raise UsageError(f"{FLAGS.get(err.field, err.field)} {err.detail}") from err


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise ExportCancelled("terminated; nothing was committed")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Providers report what the user should know (a leftover snapshot removed) as warnings.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    try:
        opts = to_options(args)
        return run_many(opts) if isinstance(opts, ManyOptions) else run(opts)
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
            repo = Repository.open(opts.output, password=opts.password) if opts.output else None
            analysis = analyze(provider, history, repo=repo, max_age=opts.max_age)
            print_analysis(analysis, as_json=opts.json)
            return 0
        if opts.request is None:  # pragma: no cover - to_options builds one for an export
            raise UsageError("an export needs --output (the repository folder)")
        return _export(opts, opts.request, provider, history)
    finally:
        provider.close()


def _say(opts: Options, doc: dict[str, object]) -> int:
    if opts.json:
        print_json(doc)
    elif not opts.quiet:
        print(doc["message"])
    return 0


def _export(opts: Options, request: ExportRequest, provider: Provider, history: History) -> int:
    bar = ByteProgress(enabled=not (opts.quiet or opts.json))

    def on_plan(mode: str, reason: str, total: int) -> None:
        if not (opts.quiet or opts.json):
            sys.stderr.write(f"{mode} export: {reason}\n")
        bar.start(f"{mode} export", total)

    try:
        report = run_export(
            provider,
            request,
            history,
            ExportHooks(on_plan=on_plan, progress=bar.advance),
            password=opts.password,
        )
    finally:
        bar.close()
    audit = report.audit
    if audit is not None and (audit.blocks_missed or not (opts.quiet or opts.json)):
        # A miss is a warning even in --json and --quiet runs: the data is fine now,
        # but the generation audited may not be.
        prefix = "warning: " if audit.blocks_missed else ""
        sys.stderr.write(f"{prefix}{audit.summary()}\n")
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
