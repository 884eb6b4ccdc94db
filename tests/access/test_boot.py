"""verify --boot: a tiny bootable disk is exported into a repository and booted from it.

The disk's first sector is a real-mode boot sector, hand-assembled below, that writes a
marker on COM1 (I/O port 0x3f8) and halts; the rest of the disk is zeros. SeaBIOS loads
the sector at 0x7c00 and jumps to it, so the marker on the serial console proves that
QEMU booted the bytes served from the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hypersdk.providers.base import VmIdentity
from hypersdk.repository.repository import Repository
from tests.chain import BS
from tests.cli.named_repo import export_as

MARKER = b"HYPERSDK-BOOT-OK"
BOOT_CODE = bytes([
    0xFA,              # 7c00  cli
    0xFC,              # 7c01  cld              (lodsb counts upwards)
    0x31, 0xC0,        # 7c02  xor ax, ax
    0x8E, 0xD8,        # 7c04  mov ds, ax
    0xBE, 0x17, 0x7C,  # 7c06  mov si, 0x7c17   (the message below)
    0xBA, 0xF8, 0x03,  # 7c09  mov dx, 0x3f8    (COM1 data register)
    0xAC,              # 7c0c  next: lodsb
    0x84, 0xC0,        # 7c0d  test al, al
    0x74, 0x03,        # 7c0f  jz halt          (NUL ends the message)
    0xEE,              # 7c11  out dx, al
    0xEB, 0xF8,        # 7c12  jmp next
    0xF4,              # 7c14  halt: hlt
    0xEB, 0xFD,        # 7c15  jmp halt
]) + MARKER + b"\r\n\x00"  # 7c17  the message  # fmt: skip

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"
)


def boot_disk(path: Path) -> None:
    assert len(BOOT_CODE) <= 510 and BOOT_CODE.index(MARKER) == 0x17
    sector = BOOT_CODE + bytes(510 - len(BOOT_CODE)) + b"\x55\xaa"
    path.write_bytes(sector + bytes(16 * BS - 512))


@pytest.fixture
def boot_repo(tmp_path: Path) -> Repository:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    image = tmp_path / "boot.raw"
    boot_disk(image)
    export_as(repo, VmIdentity("bootvm", "tiny", "raw", "raw:bootvm"), image)
    return repo


def _verify(repo: Repository, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "verify", "--output", str(repo.root),
         "--vm", "tiny", "--boot", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_tiny_disk_boots_from_the_repository(boot_repo: Repository) -> None:
    # TCG: KVM nested in a VM can take seconds to reach the boot sector; TCG takes 0.2 s.
    proc = _verify(boot_repo, "--expect", MARKER.decode(), "--timeout", "60", "--accel", "tcg",
                   "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["damage"] == []
    boot = doc["boot"]
    assert boot["ok"] and boot["vm"] == "bootvm" and boot["disk"] == "disk-0"
    assert boot["accelerator"] == "tcg"
    assert MARKER.decode() in boot["console_tail"]


def test_a_line_that_never_comes_fails_within_the_timeout(boot_repo: Repository) -> None:
    proc = _verify(boot_repo, "--expect", "login:", "--timeout", "1.5", "--accel", "tcg")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DID NOT BOOT" in proc.stdout and "within the timeout" in proc.stdout


def test_boot_needs_a_vm(boot_repo: Repository) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "verify", "--output",
         str(boot_repo.root), "--boot"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--boot needs --vm" in proc.stderr
