"""Helpers for tests that export raw images into a repository (no hypervisor involved)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hypersdk.engine.writer import GenerationResult, GenerationWriter
from hypersdk.providers.base import Extent, FrozenDisk, VmIdentity
from hypersdk.providers.raw import RawImageReader
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk

BS = 64 * 1024  # the smallest block size: many blocks in small test images


def vm(name: str = "vm1") -> VmIdentity:
    return VmIdentity(name, name, "raw", f"raw:{name}")


def export(
    repo: Repository,
    images: dict[str, Path],
    *,
    changed: dict[str, list[Extent] | None] | None = None,
    parent: Manifest | None = None,
    name: str = "vm1",
    parallel: int = 3,
) -> GenerationResult:
    """Export raw images as one generation; ``changed`` per disk (None = read all)."""
    readers = {k: RawImageReader(p) for k, p in images.items()}
    try:
        disks = [
            FrozenDisk(
                key=k,
                capacity_bytes=os.path.getsize(p),
                change_id=f"c-{k}",
                changed=(changed or {}).get(k),
                reader=readers[k],
            )
            for k, p in images.items()
        ]
        with GenerationWriter(repo, vm(name)) as w:
            return w.write(
                disks,
                parent=parent,
                reason="test",
                parallel=parallel,
            )
    finally:
        for r in readers.values():
            r.close()


def restored_bytes(repo: Repository, manifest: Manifest, disk: str, tmp: Path) -> bytes:
    out = tmp / f"restore-{manifest.id}-{disk}.raw"
    restore_disk(repo, manifest, disk, out, force=True)
    data = out.read_bytes()
    out.unlink()
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
