"""The one small interface every platform implements.

A provider finds a VM, reports and changes its changed block tracking (CBT), and opens a
point-in-time backup session. It never writes to a repository. The records it hands the
engine (``FrozenDisk`` with its ``Extent`` list and ``DiskReader``, ``VmIdentity``) are
defined here: the engine depends on providers, never the reverse. Vendor exceptions are
translated into ``hypersdk.errors`` types at this boundary, chained with ``from``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

__all__ = [
    "BackupSession",
    "CbtStatus",
    "ChangeIdCheck",
    "DiskInfo",
    "DiskReader",
    "EstimatedChanges",
    "Extent",
    "FrozenDisk",
    "Provider",
    "VmIdentity",
]


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
    platform: str  # "vsphere", "qemu", "libvirt" or "raw"
    locator: str  # what the user typed: an inventory path, qemu:/sock, qcow2:/file


class DiskReader(Protocol):
    """Reads bytes of the frozen disk; must be safe to call from several threads."""

    def pread(self, offset: int, length: int) -> bytes: ...


@dataclass(slots=True)
class FrozenDisk:
    """One disk of a backup session, frozen at its point in time.

    ``changed`` lists the extents that differ from the parent generation (or, for a
    full export, the allocated extents with holes left out or marked ``zero``).
    ``None`` means "read every byte". Blocks that no extent touches keep the parent's
    content (incremental) or are zero (full).

    ``reported`` is set only in an audit session (``open_backup(since, audit=True)``):
    the extents the platform's tracking reports as changed since ``since``, while
    ``changed`` then holds what a full export reads.
    """

    key: str
    capacity_bytes: int
    change_id: str
    changed: list[Extent] | None
    reader: DiskReader
    path: str = ""
    backing_info: str = ""
    reported: list[Extent] | None = None


@dataclass(slots=True)
class DiskInfo:
    """A disk as the spec's JSON shows it (``/cbt/status`` ``disks`` items)."""

    key: str
    path: str
    capacity_bytes: int
    change_id: str  # "" when the disk has no change id (CBT off)
    backing_info: str
    cbt_supported: bool = True
    cbt_reason: str = ""  # why this disk cannot be tracked, when it cannot


@dataclass(slots=True)
class CbtStatus:
    enabled: bool
    disks: list[DiskInfo]
    reason: str = ""  # why CBT is off or unusable, in one sentence


@dataclass(slots=True)
class ChangeIdCheck:
    """Whether the platform still knows a previous change id for a disk."""

    valid: bool
    reason: str = ""


class BackupSession(Protocol):
    """A frozen point in time of every disk. Leaving the ``with`` block always tears it
    down (snapshot deleted, export and nodes removed), also on errors and Ctrl-C."""

    @property
    def disks(self) -> list[FrozenDisk]: ...

    def __enter__(self) -> BackupSession: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass(slots=True)
class EstimatedChanges:
    """Bytes changed per disk since a change id; ``exact`` when the platform counted."""

    per_disk: dict[str, int] = field(default_factory=dict)
    exact: bool = False


class Provider(Protocol):
    """One VM on one platform."""

    def identity(self) -> VmIdentity: ...

    def cbt_status(self) -> CbtStatus: ...

    def enable_cbt(self) -> None: ...

    def disable_cbt(self) -> None: ...

    def check_change_id(self, disk_key: str, change_id: str) -> ChangeIdCheck: ...

    def estimate_changes(self, since: Mapping[str, str]) -> EstimatedChanges: ...

    def open_backup(self, since: Mapping[str, str] | None, *, audit: bool = False) -> BackupSession:
        """Start a backup session. ``since`` maps disk key to the previous change id
        (incremental); ``None`` asks for a full export (allocated areas only).
        ``audit`` with ``since``: a full export's extents in ``changed``, and the
        tracking's answer since ``since`` in ``reported`` (the CBT audit)."""
        ...

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        """Called after the repository committed the generation: the platform may now
        drop tracking state older than ``change_ids`` (e.g. old QEMU checkpoints)."""
        ...

    def close(self) -> None: ...
