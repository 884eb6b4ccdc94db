"""vSphere change ids: ``<uuid>/<sequence>``, as a disk's ``backing.changeId`` shows them.

The uuid names one tracking epoch of the disk: CBT turned off and on again, or reset by
a storage move, gives a new uuid, and an old change id of another epoch cannot be asked
about. The sequence grows with each snapshot. ``check`` is the one place these rules
live (the provider's estimate and the backup session both ask it), as QEMU's checkpoint
rules live in ``providers/qemu/_checkpoints.check``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypersdk.providers.base import ChangeIdCheck


@dataclass(frozen=True, slots=True)
class ChangeId:
    uuid: str
    sequence: int


def parse(text: str) -> ChangeId | None:
    """The parts of a change id, or None when it is not ``<uuid>/<whole number>``."""
    uuid, slash, seq = text.rpartition("/")
    uuid = uuid.strip()
    if not slash or not uuid or not seq.strip().isdigit():
        return None
    return ChangeId(uuid, int(seq))


def check(disk_key: str, previous: str, current: str | None, *, tracking: bool) -> ChangeIdCheck:
    """Whether ``previous`` (saved by the last export) can serve an incremental export of
    the disk whose change id is now ``current`` (None: the VM no longer has the disk;
    ``tracking``: CBT is on for the VM)."""
    if current is None:
        return ChangeIdCheck(False, f"Disk {disk_key} is no longer part of the VM")
    if not previous:
        return ChangeIdCheck(False, f"Disk {disk_key} has no previous change id")
    if not tracking or not current:
        return ChangeIdCheck(False, f"CBT is off on {disk_key}: a new baseline is needed")
    old, now = parse(previous), parse(current)
    if old is None:
        return ChangeIdCheck(False, f"The previous change id of {disk_key} is malformed")
    if now is None:
        return ChangeIdCheck(False, f"The change id of {disk_key} is malformed: {current}")
    if old.uuid != now.uuid:
        return ChangeIdCheck(
            False, f"CBT was reset on {disk_key} (change id uuid differs): {previous} -> {current}"
        )
    if old.sequence > now.sequence:
        return ChangeIdCheck(
            False, f"The previous change id of {disk_key} is newer than the disk's"
        )
    return ChangeIdCheck(True)
