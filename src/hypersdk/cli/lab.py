"""hyperctl lab: the vSphere lab (vcsim with changed block tracking) for tests and demos.

    hyperctl lab start [--port N] [--vm NAME:SIZE[,SIZE...]]... [--cbt] [--json]
    hyperctl lab status [--json]
    hyperctl lab stop
    hyperctl lab vms [--json]
    hyperctl lab write --vm PATH --offset N (--length N [--zero] [--seed S] | --file F) [--disk KEY]
    hyperctl lab config [--max-changed-areas N] [--cbt-needs-stun true|false]
    hyperctl lab reset-cbt --vm PATH
    hyperctl lab build [--force]

The state folder is ``~/.hypersdk/lab`` unless ``--state-dir`` or ``HYPERSDK_LAB_DIR``
says otherwise.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hypersdk.cli.numbers import int_in, size_in
from hypersdk.cli.output import human_bytes, print_json
from hypersdk.errors import UsageError
from hypersdk.lab.vcsim import (
    LabSettings,
    LabVm,
    VcsimLab,
    default_state_dir,
    parse_vm_spec,
)

MAX_COUNT = 2**31 - 1  # the lab's knobs and device keys are 32-bit integers in Go


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lab",
        help="run the vSphere lab (vcsim with CBT) for tests and demos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run, lab_command=None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the lab's state folder (default: $HYPERSDK_LAB_DIR or {default_state_dir()})",
    )
    sub = p.add_subparsers(dest="lab_command", metavar="COMMAND")

    start = sub.add_parser("start", parents=[common], help="build if needed and start the lab")
    start.add_argument(
        "--port", type=int_in(0, 65535), default=0, help="port on 127.0.0.1 (0: a free one)"
    )
    start.add_argument(
        "--vm",
        action="append",
        default=[],
        metavar="NAME:SIZE[,SIZE...]",
        help="a VM to create instead of the default set (repeatable), e.g. web:1G,64M",
    )
    start.add_argument("--cbt", action="store_true", help="create the VMs with CBT enabled")
    start.add_argument(
        "--max-changed-areas",
        type=int_in(0, MAX_COUNT),
        default=0,
        help="at most N areas per QueryChangedDiskAreas reply (0: no limit)",
    )
    start.add_argument(
        "--block-size",
        type=size_in(4 << 10, 16 << 20),
        default=64 << 10,
        help="granularity of the lab's tracking (default 64K)",
    )
    start.add_argument("--json", action="store_true", help="print the settings as one object")

    status = sub.add_parser("status", parents=[common], help="is the lab running, and where")
    status.add_argument("--json", action="store_true")

    sub.add_parser("stop", parents=[common], help="stop the lab (by its pid)")

    vms = sub.add_parser("vms", parents=[common], help="list the VMs and their disk files")
    vms.add_argument("--json", action="store_true")

    write = sub.add_parser("write", parents=[common], help="write 'guest' data into a VM disk")
    write.add_argument("--vm", required=True, help="inventory path, e.g. /DC0/vm/DC0_H0_VM0")
    write.add_argument(
        "--offset",
        required=True,
        type=size_in(0, 1 << 50),
        help="byte offset (suffix K, M, G allowed)",
    )
    what = write.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--length", type=size_in(1, 1 << 30), help="write this many random bytes (K, M, G allowed)"
    )
    what.add_argument("--file", type=Path, help="write the contents of this file")
    write.add_argument("--zero", action="store_true", help="with --length: write zeros")
    write.add_argument(
        "--seed", type=int_in(0, 2**63 - 1), default=None, help="with --length: reproducible data"
    )
    write.add_argument(
        "--disk", type=int_in(0, MAX_COUNT), default=None, help="device key (default: first disk)"
    )
    write.add_argument("--json", action="store_true")

    config = sub.add_parser("config", parents=[common], help="show or change the lab's knobs")
    config.add_argument("--max-changed-areas", type=int_in(0, MAX_COUNT), default=None)
    config.add_argument("--max-epochs", type=int_in(2, MAX_COUNT), default=None)
    config.add_argument("--cbt-needs-stun", choices=("true", "false"), default=None)
    config.add_argument("--json", action="store_true")

    reset = sub.add_parser("reset-cbt", parents=[common], help="invalidate a VM's change ids")
    reset.add_argument("--vm", required=True)
    reset.add_argument("--json", action="store_true")

    build = sub.add_parser("build", parents=[common], help="build the simulator binary")
    build.add_argument("--force", action="store_true")


def _print_settings(s: LabSettings, as_json: bool) -> None:
    if as_json:
        print_json(s.to_json())
        return
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.govc_env().items())
    print(f"export {env}")
    print(f"# pid {s.pid}; datastore {s.datastore} in {s.datastore_dir}; knobs at {s.lab_url}")


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "lab_command", None)
    if command is None:
        raise UsageError("hyperctl lab needs a command: start, status, stop, vms, write, ...")
    lab = VcsimLab(args.state_dir)
    if command == "start":
        settings = lab.start(
            port=args.port,
            vms=[parse_vm_spec(v) for v in args.vm],
            cbt=args.cbt,
            max_changed_areas=args.max_changed_areas,
            block_size=args.block_size,
        )
        _print_settings(settings, args.json)
    elif command == "status":
        st = lab.status()
        if args.json:
            print_json(
                {
                    "running": st.running,
                    "pid": st.pid,
                    "state_dir": str(st.state_dir),
                    "message": st.message,
                    "settings": st.settings.to_json() if st.settings else None,
                }
            )
        else:
            print(f"vSphere lab in {st.state_dir}: {st.message}")
            if st.settings:
                _print_settings(st.settings, False)
        return 0 if st.running else 3
    elif command == "stop":
        stopped = lab.stop()
        print("stopped" if stopped else "not running")
    elif command == "vms":
        vms = lab.vms()
        if args.json:
            print_json([_vm_json(vm) for vm in vms])
        for vm in [] if args.json else vms:
            cbt = "cbt on" if vm.cbt_enabled else "cbt off"
            print(f"{vm.path}  {vm.power_state}  {cbt}  snapshots {vm.snapshots}")
            for d in vm.disks:
                print(
                    f"  {d.key}  {d.label}  {human_bytes(d.capacity_bytes)}  {d.flat_file}"
                    f"  change id {d.change_id or '-'}"
                )
    elif command == "write":
        offset = args.offset
        if args.file is not None:
            if args.zero or args.seed is not None:
                raise UsageError("--zero and --seed go with --length, not --file")
            data = lab.write(args.vm, offset, data=args.file.read_bytes(), disk_key=args.disk)
        else:
            data = lab.write(
                args.vm,
                offset,
                length=args.length,
                disk_key=args.disk,
                zero=args.zero,
                seed=args.seed,
            )
        if args.json:
            print_json({"vm": args.vm, "offset": offset, "length": len(data)})
        else:
            print(f"wrote {len(data)} bytes at offset {offset} of {args.vm}")
    elif command == "config":
        stun = None if args.cbt_needs_stun is None else args.cbt_needs_stun == "true"
        cfg = lab.config(
            max_changed_areas=args.max_changed_areas,
            max_epochs=args.max_epochs,
            cbt_needs_stun=stun,
        )
        if args.json:
            print_json(cfg)
        else:
            print(" ".join(f"{k}={v}" for k, v in cfg.items()))
    elif command == "reset-cbt":
        disks = lab.reset_cbt(args.vm)
        if args.json:
            print_json([{"key": d.key, "change_id": d.change_id} for d in disks])
        for d in [] if args.json else disks:
            print(f"{d.key}  {d.change_id}")
    elif command == "build":
        print(lab.build(force=args.force))
    else:  # pragma: no cover - argparse restricts the choices
        raise UsageError(f"unknown lab command: {command}")
    return 0


def _vm_json(vm: LabVm) -> dict[str, Any]:
    doc = asdict(vm)
    for d in doc["disks"]:
        d["flat_path"] = str(d["flat_path"])
    return doc
