"""hyperctl serve: one generation's disk as an NBD export, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType

from hypersdk.access.export import DEFAULT_CACHE_BYTES, RepositoryExport
from hypersdk.access.serving import LOOPBACK, BackgroundServer, Listen
from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.numbers import int_in
from hypersdk.cli.output import human_bytes, print_json
from hypersdk.cli.password import add_password_flag, password_from
from hypersdk.engine.catalog import resolve_vm
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import pick_disk


@dataclass(frozen=True)
class ServeOptions:
    output: str
    vm: str
    generation: str
    disk: str | None
    listen: Listen
    writable: bool
    cache_mib: int
    json: bool


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="serve a disk of a generation over NBD (instant access, no restore)"
    )
    p.add_argument("--output", required=True, help="the repository folder")
    p.add_argument("--vm", required=True, help="the VM: its locator, id or name")
    add_password_flag(p)
    p.add_argument("--generation", default="latest", help="generation id or 'latest'")
    p.add_argument("--disk", help="disk key (may be left out when the VM has one disk)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="listen on this unix socket (made 0600, removed at exit)")
    where.add_argument(
        "--port", type=int_in(0, 65535), help="listen on this TCP port (0: any free port)"
    )
    p.add_argument(
        "--bind", default=LOOPBACK, help=f"address for --port (default {LOOPBACK}: this host only)"
    )
    p.add_argument(
        "--writable",
        action="store_true",
        help="accept writes into a temporary overlay dropped at exit (the repository is "
        "never changed)",
    )
    p.add_argument(
        "--cache-mib",
        type=int_in(1, 1 << 20),
        default=DEFAULT_CACHE_BYTES >> 20,
        help="decoded chunk cache in MiB",
    )
    p.add_argument("--json", action="store_true", help="print the session as one JSON object")
    p.set_defaults(func=run)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()
    opts = ServeOptions(
        args.output,
        args.vm,
        args.generation,
        args.disk,
        Listen(socket=args.socket, port=args.port, host=args.bind),
        args.writable,
        args.cache_mib,
        args.json,
    )
    opts.listen.check()
    if opts.listen.port is not None and not _loopback(opts.listen.host):
        print(
            f"hyperctl: warning: NBD has no authentication: anyone who can reach "
            f"{opts.listen.host}:{opts.listen.port} can read the disk"
            + (" and write to its overlay" if opts.writable else ""),
            file=sys.stderr,
        )
    os.umask(0o077)  # the socket is private from the moment it is bound
    repo = Repository.open(opts.output, password=password_from(args))
    manifest = repo.generation(resolve_vm(repo, opts.vm), opts.generation)
    key = pick_disk(manifest, opts.disk)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with (
            RepositoryExport(
                repo, manifest, key, writable=opts.writable, cache_bytes=opts.cache_mib << 20
            ) as export,
            BackgroundServer(
                export, opts.listen, description=f"{manifest.vm_id} {manifest.id} {key}"
            ) as server,
        ):
            doc = {
                "uri": server.uri,
                "vm": manifest.vm_id,
                "generation": manifest.id,
                "disk": key,
                "size": export.size,
                "writable": opts.writable,
            }
            if opts.json:
                print_json(doc)
            else:
                mode = "read-write (overlay dropped at exit)" if opts.writable else "read-only"
                print(
                    f"serving {manifest.vm_id} generation {manifest.id} disk {key} "
                    f"({human_bytes(export.size)}, {mode}) at {server.uri}",
                    flush=True,
                )
                print("stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if not opts.json:
        print("stopped", file=sys.stderr)
    return 0
