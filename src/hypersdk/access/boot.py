"""Prove that a generation boots: start ``qemu-system-x86_64`` on the served disk and
wait for an expected line on its serial console.

The disk is served read-only over NBD on a unix socket in a private temp folder; QEMU
opens it with ``snapshot=on``, so the guest's writes go to a throwaway qcow2 overlay
QEMU makes and deletes itself: the repository is never changed. KVM is used when
``/dev/kvm`` can be opened, else TCG (or as the caller chooses). The serial console
(COM1) goes to a file in the temp folder; the check passes as soon as ``expect``
appears in it, and fails when the timeout passes or QEMU exits first. QEMU is always
stopped by its pid afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from hypersdk.access.export import RepositoryExport
from hypersdk.access.serving import BackgroundServer, Listen
from hypersdk.errors import UsageError
from hypersdk.processes import stop_process
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository

DEFAULT_EXPECT = "login:"
DEFAULT_TIMEOUT = 300.0
DEFAULT_MEMORY_MIB = 512
ACCELERATORS = ("auto", "kvm", "tcg")
_POLL = 0.05
_TAIL = 2000  # characters of console output kept in the result


@dataclass
class BootResult:
    ok: bool
    vm: str
    generation: str
    disk: str
    accelerator: str
    expect: str
    seconds: float
    reason: str
    console_tail: str


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_system() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        raise UsageError("--boot needs qemu-system-x86_64 (Debian package qemu-system-x86)")
    return path


def boot_check(
    repo: Repository,
    manifest: Manifest,
    disk_key: str,
    *,
    expect: str = DEFAULT_EXPECT,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    accel: str = "auto",
) -> BootResult:
    """``accel``: "kvm", "tcg", or "auto" (KVM when /dev/kvm opens, else TCG)."""
    if accel not in ACCELERATORS:
        raise UsageError(f"unknown accelerator {accel!r}: choose auto, kvm or tcg")
    if not expect:
        raise UsageError("--expect must not be empty")
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    tool = qemu_system()
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    elif accel == "kvm" and not kvm_usable():
        raise UsageError("--accel kvm: /dev/kvm cannot be opened")
    wanted = expect.encode()
    with (
        tempfile.TemporaryDirectory(prefix="hypersdk-boot-") as tmp,
        RepositoryExport(repo, manifest, disk_key) as export,
        BackgroundServer(export, Listen(socket=os.path.join(tmp, "nbd.sock"))) as server,
    ):
        console = os.path.join(tmp, "console.log")
        cmd = [
            tool,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-accel",
            accel,
            "-m",
            str(memory_mib),
            "-drive",
            f"file={server.uri},format=raw,if=ide,snapshot=on",
            "-serial",
            f"file:{console}",
        ]
        start = time.monotonic()
        with tempfile.TemporaryFile(dir=tmp) as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=_env(tmp)
            )
            try:
                ok, reason = _watch(proc, console, wanted, start + timeout)
            finally:
                stop_process(proc, grace=2.0)
            if not ok and proc.returncode not in (None, 0, -15, -9):
                err.seek(0)
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
                if lines:
                    reason = f"{reason}: {lines[-1]}"
        seconds = time.monotonic() - start
        tail = _read(console)[-_TAIL:].decode("utf-8", "replace")
    return BootResult(
        ok=ok,
        vm=manifest.vm_id,
        generation=manifest.id,
        disk=disk_key,
        accelerator=accel,
        expect=expect,
        seconds=round(seconds, 3),
        reason=reason,
        console_tail=tail,
    )


def _env(tmp: str) -> dict[str, str]:
    # snapshot=on puts QEMU's throwaway overlay in TMPDIR: our private folder.
    return {**os.environ, "TMPDIR": tmp}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _watch(
    proc: subprocess.Popen[bytes], console: str, wanted: bytes, deadline: float
) -> tuple[bool, str]:
    while True:
        if wanted in _read(console):
            return True, f"the guest wrote {wanted.decode()!r} on its serial console"
        if proc.poll() is not None:
            if wanted in _read(console):
                continue
            return False, f"QEMU exited with status {proc.returncode} before the expected line"
        if time.monotonic() >= deadline:
            return False, "the expected line did not appear within the timeout"
        time.sleep(_POLL)
