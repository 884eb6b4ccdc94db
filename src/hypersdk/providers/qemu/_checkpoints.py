"""Checkpoints: persistent dirty bitmaps named ``hypersdk-<UTC time>-<random>``.

A checkpoint bitmap records every write to its disk since it was created; its name is the
disk's change id. Bitmaps whose names do not start with ``hypersdk-`` belong to someone
else (libvirt, an operator) and are never touched. Names sort by creation time.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypersdk.providers.base import ChangeIdCheck

PREFIX = "hypersdk-"


@dataclass(frozen=True, slots=True)
class Bitmap:
    """What QEMU (or qemu-img) reports about one dirty bitmap of one disk."""

    name: str
    persistent: bool
    recording: bool
    inconsistent: bool = False
    busy: bool = False
    granularity: int = 65536
    count: int | None = None  # dirty bytes; None when offline (qemu-img does not count)


def new_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{PREFIX}{stamp}-{secrets.token_hex(4)}"


def is_ours(name: str) -> bool:
    return name.startswith(PREFIX)


def from_qmp(items: Iterable[Mapping[str, Any]]) -> list[Bitmap]:
    """Parse ``dirty-bitmaps`` of ``query-named-block-nodes``/``query-block``."""
    return [
        Bitmap(
            name=str(b["name"]),
            persistent=bool(b.get("persistent", False)),
            recording=bool(b.get("recording", False)),
            inconsistent=bool(b.get("inconsistent", False)),
            busy=bool(b.get("busy", False)),
            granularity=int(b.get("granularity", 65536)),
            count=int(b.get("count", 0)),
        )
        for b in items
        if "name" in b  # anonymous bitmaps (block jobs) have no name
    ]


def from_image_info(info: Mapping[str, Any]) -> list[Bitmap]:
    """Parse the bitmaps of ``qemu-img info --output=json`` (qcow2 only).

    Flag ``auto`` means the bitmap records writes; ``in-use`` on an image that nobody has
    open means a writer died without saving it: the bitmap is inconsistent.
    """
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {}
    return [
        Bitmap(
            name=str(b["name"]),
            persistent=True,
            recording="auto" in b.get("flags", []),
            inconsistent="in-use" in b.get("flags", []),
            granularity=int(b.get("granularity", 65536)),
        )
        for b in data.get("bitmaps", [])
    ]


def check(bitmaps: Iterable[Bitmap], change_id: str) -> ChangeIdCheck:
    """Whether ``change_id`` names a checkpoint that can serve an incremental export."""
    found = next((b for b in bitmaps if b.name == change_id), None)
    if found is None:
        return ChangeIdCheck(False, f"checkpoint bitmap {change_id} does not exist")
    if found.inconsistent:
        return ChangeIdCheck(False, f"checkpoint bitmap {change_id} is inconsistent")
    if not found.persistent:
        return ChangeIdCheck(False, f"checkpoint bitmap {change_id} is not persistent")
    if not found.recording:
        return ChangeIdCheck(False, f"checkpoint bitmap {change_id} is not recording writes")
    if found.busy:
        return ChangeIdCheck(False, f"checkpoint bitmap {change_id} is in use by a job")
    return ChangeIdCheck(True)


def current(bitmaps: Iterable[Bitmap]) -> Bitmap | None:
    """The newest usable checkpoint of ours, or None."""
    usable = [b for b in bitmaps if is_ours(b.name) and check([b], b.name).valid]
    return max(usable, key=lambda b: b.name, default=None)


def stale(bitmaps: Iterable[Bitmap], keep: str) -> list[str]:
    """Names of our checkpoints other than ``keep`` (to drop after a commit)."""
    return sorted(b.name for b in bitmaps if is_ours(b.name) and b.name != keep)
