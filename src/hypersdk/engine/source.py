"""What the engine reads: one disk frozen at a point in time.

A provider's backup session hands the engine one ``DiskSnapshot`` per disk. The engine
never talks to a hypervisor; tests build ``DiskSnapshot`` objects over raw image files.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Extent:
    """A byte range of a disk.

    ``zero`` marks a range that reads as zeros (a hole, a trim, an unallocated area):
    the engine records it as zero without reading it. A changed range that is zero must
    still be reported (as ``zero=True``), never dropped, or the old data would survive.
    """

    offset: int
    length: int
    zero: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class VmIdentity:
    """Who the VM is. ``vm_id`` is stable across exports and names its history folder."""

    vm_id: str
    name: str
    platform: str  # "vsphere", "qemu" or "raw"
    locator: str  # what the user typed: an inventory path, qemu:/sock, qcow2:/file


class DiskReader(Protocol):
    """Reads bytes of the frozen disk; must be safe to call from several threads."""

    def pread(self, offset: int, length: int) -> bytes: ...


@dataclass(slots=True)
class DiskSnapshot:
    """One disk of a backup session.

    ``changed`` lists the extents that differ from the parent generation (or, for a
    full export, the allocated extents with holes left out or marked ``zero``).
    ``None`` means "read every byte". Blocks that no extent touches keep the parent's
    content (incremental) or are zero (full).
    """

    key: str
    capacity_bytes: int
    change_id: str
    changed: list[Extent] | None
    reader: DiskReader
    path: str = ""
    backing_info: str = ""


class RawImageReader:
    """Reads a raw image file with ``os.pread``; for tests, the demo and benchmarks."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._closed = threading.Event()

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:
            # Reading past the end of the file: the disk reads as zeros there.
            data += bytes(length - len(data))
        return data

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)

    def __enter__(self) -> RawImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
