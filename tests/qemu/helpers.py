"""Helpers shared by the QEMU provider tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypersdk.providers.base import Extent, FrozenDisk

CHUNK = 1024 * 1024


def image_bytes(image: Path, tmp: Path) -> bytes:
    """The disk's content by ``qemu-img convert`` (a reference independent of NBD)."""
    raw = tmp / f"{image.stem}-reference.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(raw)],
        check=True,
    )
    data = raw.read_bytes()
    raw.unlink()
    return data


def assert_contiguous(extents: list[Extent], size: int) -> None:
    pos = 0
    for ext in extents:
        assert ext.offset == pos, f"gap or overlap at {pos}: {ext}"
        assert ext.length > 0
        pos = ext.end
    assert pos == size


def materialize(disk: FrozenDisk, parent: bytes | None = None) -> bytes:
    """Apply the session's extents the way the engine does: start from the parent (or
    zeros), write zero extents as zeros and read the others."""
    out = bytearray(parent if parent is not None else bytes(disk.capacity_bytes))
    assert disk.changed is not None
    for ext in disk.changed:
        if ext.zero:
            out[ext.offset : ext.end] = bytes(ext.length)
            continue
        for off in range(ext.offset, ext.end, CHUNK):
            n = min(CHUNK, ext.end - off)
            out[off : off + n] = disk.reader.pread(off, n)
    return bytes(out)


def ranges(extents: list[Extent], zero: bool) -> list[tuple[int, int]]:
    """Merged ``(offset, end)`` of the extents with the given zero flag."""
    out: list[tuple[int, int]] = []
    for ext in extents:
        if ext.zero != zero:
            continue
        if out and out[-1][1] == ext.offset:
            out[-1] = (out[-1][0], ext.end)
        else:
            out.append((ext.offset, ext.end))
    return out
