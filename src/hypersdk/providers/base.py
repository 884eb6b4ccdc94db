"""The one small interface every platform implements.

A provider finds a VM, reports and changes its changed block tracking (CBT), and opens a
point-in-time backup session. It never writes to a repository. Vendor exceptions are
translated into ``hypersdk.errors`` types at this boundary, chained with ``from``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from hypersdk.engine.source import DiskSnapshot, VmIdentity

__all__ = [
    "BackupSession",
    "CbtStatus",
    "ChangeIdCheck",
    "DiskInfo",
    "EstimatedChanges",
    "Provider",
    "VmIdentity",
]


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
    def disks(self) -> list[DiskSnapshot]: ...

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

    def open_backup(self, since: Mapping[str, str] | None) -> BackupSession:
        """Start a backup session. ``since`` maps disk key to the previous change id
        (incremental); ``None`` asks for a full export (allocated areas only)."""
        ...

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        """Called after the repository committed the generation: the platform may now
        drop tracking state older than ``change_ids`` (e.g. old QEMU checkpoints)."""
        ...

    def close(self) -> None: ...
