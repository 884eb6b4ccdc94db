"""QEMU/KVM provider: changed block tracking with persistent dirty bitmaps, point-in-time
reads over NBD from a fleecing overlay (the way libvirt's pull-mode backup works).

Modules (private): ``_qmp`` talks QMP, ``_tools`` runs qemu-img/qemu-nbd, ``_discovery``
finds the disks, ``_checkpoints`` names and validates bitmaps, ``_extents`` turns NBD
block status into extents, ``_session`` holds the backup sessions, ``_provider`` the
facade, ``_factory`` parses locators, ``_writable`` opens a disk for writing (a restore
into it).
"""

from hypersdk.providers.qemu._factory import open_qemu_provider
from hypersdk.providers.qemu._provider import Qcow2Provider, QmpProvider
from hypersdk.providers.qemu._session import Qcow2BackupSession, QmpBackupSession
from hypersdk.providers.qemu._writable import WritableDisk, open_image, open_qemu_disk

__all__ = [
    "Qcow2BackupSession",
    "Qcow2Provider",
    "QmpBackupSession",
    "QmpProvider",
    "WritableDisk",
    "open_image",
    "open_qemu_disk",
    "open_qemu_provider",
]
