"""hyperctl verify: re-read and re-hash everything the selected generations need; with
``--boot``, also boot one generation's disk in QEMU and wait for a line on its console."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from hypersdk.access.boot import (
    ACCELERATORS,
    DEFAULT_EXPECT,
    DEFAULT_TIMEOUT,
    BootResult,
    boot_check,
)
from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.numbers import float_in
from hypersdk.cli.output import print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import select_for_verify
from hypersdk.errors import UsageError
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import pick_disk
from hypersdk.repository.verify import verify


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check that generations restore byte for byte")
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", help="only this VM: its locator, id or name")
    p.add_argument("--generation", help="generation id or 'latest' (needs --vm)")
    p.add_argument("--parallel", type=int, default=4)
    add_password_flag(p)
    p.add_argument(
        "--boot",
        action="store_true",
        help="also boot the generation (needs --vm) in qemu-system-x86_64 from a throwaway "
        "overlay; pass when --expect appears on its serial console",
    )
    p.add_argument("--disk", help="with --boot: the disk to boot (may be left out for one disk)")
    p.add_argument(
        "--expect",
        default=DEFAULT_EXPECT,
        help=f"with --boot: the text the guest must write on COM1 (default {DEFAULT_EXPECT!r})",
    )
    p.add_argument(
        "--timeout",
        type=float_in(0.0, 86400.0, low_open=True),
        default=DEFAULT_TIMEOUT,
        help=f"with --boot: seconds to wait for it (default {DEFAULT_TIMEOUT:.0f})",
    )
    p.add_argument(
        "--accel",
        choices=ACCELERATORS,
        default="auto",
        help="with --boot: auto (KVM when /dev/kvm is usable, else TCG), kvm or tcg",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    if args.generation and not args.vm:
        raise UsageError("--generation needs --vm")
    if args.boot and not args.vm:
        raise UsageError("--boot needs --vm (and boots its --generation, default the latest)")
    if not args.boot and args.disk:
        raise UsageError("--disk goes with --boot")
    repo = Repository.open(args.output, password=password_from(args))
    generation = args.generation or ("latest" if args.boot else None)
    _, manifests, damaged = select_for_verify(repo, args.vm, generation)
    report = verify(repo, manifests, parallel=args.parallel, damaged=damaged)
    boot: BootResult | None = None
    if args.boot and report.ok and manifests:
        boot = boot_check(
            repo,
            manifests[-1],
            pick_disk(manifests[-1], args.disk),
            expect=args.expect,
            timeout=args.timeout,
            accel=args.accel,
        )
    ok = report.ok and (boot is None or boot.ok)
    if args.json:
        doc = {"ok": ok, **asdict(report)}
        if args.boot:
            doc["boot"] = None if boot is None else asdict(boot)
        print_json(doc)
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
        if boot is not None:
            verdict = "BOOTS" if boot.ok else "DID NOT BOOT"
            print(
                f"{verdict}: {boot.vm} generation {boot.generation} disk {boot.disk} "
                f"({boot.accelerator}, {boot.seconds:.1f} s): {boot.reason}"
            )
        elif args.boot:
            print("boot skipped: the generation has damage")
    return 0 if ok else 1
