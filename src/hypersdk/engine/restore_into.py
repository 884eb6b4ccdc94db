"""Restore into an existing disk (``hyperctl restore --to EXISTING --since F|--compare``).

The shells call ``prepare_into`` (names resolved, target checked, before a job starts)
and then ``run_into``. A target is:

* ``qemu:/path/qmp.sock[?nbd=...]``: a disk of a paused or shut-off QEMU VM, or of a
  qemu-storage-daemon, written through a writable NBD export of it
  (``providers.qemu.open_qemu_disk``); a running guest is refused;
* a qcow2 file (its magic, or ``format="qcow2"``): written through ``qemu-nbd``; a raw
  disk whose guest data starts with an image magic needs ``format`` (never guessed);
* anything else that exists: a raw file or a block device, written directly
  (``repository.restore_into.FileTarget``); a raw file may be resized when F and G
  differ in size.

The target is never created and never followed through a symlink.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hypersdk.engine.catalog import resolve_vm
from hypersdk.errors import NotFoundError, UsageError
from hypersdk.providers.factory import check_exists
from hypersdk.providers.qemu import open_image, open_qemu_disk
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import pick_disk, read_chunk
from hypersdk.repository.restore_into import (
    BlockTarget,
    FileTarget,
    IntoPlan,
    IntoResult,
    check_size,
    plan_into,
    restore_into,
)

INTO_FORMATS = ("raw", "qcow2")
# What a file's first bytes say it is. A guest can write these bytes at the start of a
# raw disk too: see _check_not_guest_data.
MAGICS = (
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"QED\x00", "qed"),
)
_HEAD = 64


@dataclass(frozen=True)
class IntoJob:
    """A checked restore into ``target``: the plan (blocks to consider) and how to
    open the target (``kind``: qemu, qcow2 or file)."""

    plan: IntoPlan
    target: str
    kind: str


def check_mode(since: str | None, compare: bool) -> None:
    if since is not None and compare:
        raise UsageError("--since and --compare exclude each other: choose one")


def prepare_into(
    output: str | os.PathLike[str],
    vm: str,
    generation: str,
    disk: str | None,
    to: str,
    *,
    since: str | None,
    compare: bool,
    fmt: str | None = None,
    password: Password | None = None,
) -> IntoJob:
    """Resolve the VM, G (``generation``), F (``since``) and the disk the way every
    command names them, and check the target, before anything is written."""
    check_mode(since, compare)
    if since is None and not compare:
        raise UsageError("a restore into an existing disk needs --since F or --compare")
    if fmt is not None and fmt not in INTO_FORMATS:
        raise UsageError(
            f"a restore into an existing disk writes raw or qcow2, not {fmt!r} "
            "(a new vmdk file is restored without --since/--compare)"
        )
    kind, sniffed = target_kind(to, fmt)
    repo = Repository.open(output, password=password)
    vm_id = resolve_vm(repo, vm)
    manifest = repo.generation(vm_id, generation)
    key = pick_disk(manifest, disk)
    old = repo.generation(vm_id, since) if since is not None else None
    plan = plan_into(repo, manifest, key, old)
    if sniffed is not None:
        _check_not_guest_data(plan, to, sniffed)
        if sniffed != "qcow2":
            raise UsageError(
                f"{to} is a {sniffed} image: a restore into an existing disk writes a raw "
                "file, a block device, a qcow2 file or a qemu: disk"
            )
    if kind == "file":  # cheap to check now; an NBD target is checked once it is open
        with FileTarget(to) as target:
            check_size(plan, target.size, to, resizable=not target.is_device)
    return IntoJob(plan, to, kind)


def target_kind(to: str, fmt: str | None) -> tuple[str, str | None]:
    """(``qemu``, ``qcow2`` or ``file``; the image format the file's first bytes name
    when ``fmt`` was not given). Never follows a link."""
    if to.startswith("qemu:"):
        if fmt is not None:
            raise UsageError("--format does not apply to a qemu: target")
        check_exists(to)
        return "qemu", None
    try:
        st = os.lstat(to)
    except FileNotFoundError:
        raise NotFoundError(
            f"{to} does not exist (--to with --since/--compare never creates)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{to}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{to} is a symbolic link; name the disk itself")
    if stat.S_ISBLK(st.st_mode):
        if fmt not in (None, "raw"):
            raise UsageError("a block device is written as raw")
        return "file", None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{to} is neither a file, a block device nor a qemu: locator")
    if fmt is not None:
        return ("file" if fmt == "raw" else fmt), None
    fd = os.open(to, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        head = os.pread(fd, _HEAD, 0)
    finally:
        os.close(fd)
    sniffed = _sniff(head)
    return ("qcow2" if sniffed == "qcow2" else "file"), sniffed


def _sniff(head: bytes) -> str | None:
    return next((name for magic, name in MAGICS if head.startswith(magic)), None)


def _check_not_guest_data(plan: IntoPlan, to: str, sniffed: str) -> None:
    """A raw disk whose guest wrote an image header at offset 0 looks like that image:
    opening it as one would write through the guest's forged metadata. When the disk
    being restored (G, or F that the target holds) starts like that, ask instead."""
    heads = [plan.index.get(0)]
    if plan.since is not None:
        with plan.repo.reader():
            heads.append(plan.repo.load_index(plan.since, plan.disk).get(0))
    with plan.repo.reader():
        for cid in heads:
            if cid is None:
                continue
            data = read_chunk(plan.repo, cid, f"{plan.manifest.vm_id}/{plan.disk} @0")
            if _sniff(data[:_HEAD]) == sniffed:
                raise UsageError(
                    f"{to} starts like a {sniffed} image, and so does the restored disk: "
                    "say which it is with --format raw or --format qcow2"
                )


def run_into(
    job: IntoJob,
    *,
    parallel: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> IntoResult:
    """Open the target, write what differs, flush, and undo whatever was set up for it
    (NBD export, qemu-nbd) on every exit."""
    if job.kind == "file":
        with FileTarget(job.target) as target:
            return restore_into(
                job.plan,
                target,
                target_name=job.target,
                target_format=target.format,
                resize=None if target.is_device else target.resize,
                parallel=parallel,
                progress=progress,
                cancel=cancel,
            )
    if job.kind == "qemu":
        writable = open_qemu_disk(job.target, job.plan.disk)
    else:
        writable = open_image(job.target, job.kind)
    with writable:
        assert writable.client is not None
        return restore_into(
            job.plan,
            _NbdTarget(writable.client),
            target_name=writable.name,
            target_format=job.kind,
            parallel=parallel,
            progress=progress,
            cancel=cancel,
        )


class _NbdTarget:
    """An NBD client as a ``BlockTarget``: zeros are WRITE_ZEROES when the export offers
    it, written zeros otherwise."""

    def __init__(self, client: BlockTarget) -> None:
        # An NbdClient has the same calls (the engine does not import nbd).
        self._client = client
        self._zeroes = bool(getattr(client, "can_write_zeroes", False))

    @property
    def size(self) -> int:
        return self._client.size

    def pread(self, offset: int, length: int) -> bytes:
        return self._client.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._client.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        if self._zeroes:
            self._client.write_zeroes(offset, length)
        else:
            self._client.pwrite(offset, bytes(length))

    def flush(self) -> None:
        self._client.flush()
