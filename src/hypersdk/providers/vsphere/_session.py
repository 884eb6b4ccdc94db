"""The backup session: one snapshot of the VM, its disks as DiskSnapshots.

Start (any failure tears down what was built, then raises):

1. an export session (``sweep=True``) removes snapshots left by a crashed run of this
   tool (and says so) and refuses while one of ours is busy (``_snapshots``); the
   estimate's session (``sweep=False``) removes nothing it did not create;
2. refuse a VM that has other snapshots: the backup snapshot's disks would be delta
   disks, which cannot be read over ``/folder``;
3. register ``hypersdk-backup-<utc>-<rand>`` as live in this process (``_live``), then
   create it (memory off, quiesce optional); steps 1-3 hold the process's guard of the
   VM, so two sessions of this process cannot both pass step 2;
4. from the SNAPSHOT's ``config.hardware`` (not the VM's live config) take each disk's
   file name, capacity and change id, refuse any disk that is not a flat base disk;
5. per disk, page ``QueryChangedDiskAreas(snapshot, key, offset, since or "*")``; a CBT
   VM with no previous change id asks "*" (allocated areas, the rest reads as zero); a
   VM without CBT reads every byte;
6. one HTTPS Range reader per disk on the snapshot's flat file, through the
   connection's TLS context (the one the login verified).

``__exit__`` always closes the HTTP client and removes the snapshot, on errors and
Ctrl-C too, then unregisters it. A snapshot create interrupted mid-wait is found by
name and removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from hypersdk.errors import (
    ChangeIdInvalid,
    ProviderError,
)
from hypersdk.providers.base import FrozenDisk
from hypersdk.providers.cleanup import CleanupStack
from hypersdk.providers.vsphere import _changed, _changeid, _inventory, _reader, _snapshots
from hypersdk.providers.vsphere._connection import VsphereConnection
from hypersdk.providers.vsphere._inventory import VsphereDisk
from hypersdk.providers.vsphere._live import LIVE

log = logging.getLogger(__name__)

DEFAULT_POOL = 16


class VsphereBackupSession:
    def __init__(
        self,
        conn: VsphereConnection,
        vm: Any,
        since: Mapping[str, str] | None,
        *,
        audit: bool = False,
        quiesce: bool = False,
        read_data: bool = True,
        sweep: bool = True,
        pool: int = DEFAULT_POOL,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self._conn = conn
        self._vm = vm
        self._since = dict(since) if since is not None else None
        self._audit = audit
        self._quiesce = quiesce
        self._read_data = read_data
        self._sweep = sweep
        self._pool = pool
        self._on_message = on_message
        self.name = _snapshots.new_name(_snapshots.BACKUP_PREFIX)
        self.session_id = _snapshots.new_session_id()
        self.messages: list[str] = []
        self.query_calls = 0
        self._snapshot: Any = None
        self._cleanup = CleanupStack()  # the undo step of everything made so far
        self._client: _reader.FolderClient | None = None
        self._disks: list[FrozenDisk] = []
        self._closed = False

    @property
    def disks(self) -> list[FrozenDisk]:
        return self._disks

    @property
    def snapshot(self) -> Any:
        return self._snapshot

    def start(self) -> VsphereBackupSession:
        try:
            with self._conn.translate(f"backup of VM {self._vm.name}"):
                self._start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def _say(self, msg: str) -> None:
        self.messages.append(msg)
        if self._on_message is not None:
            self._on_message(msg)

    def _start(self) -> None:
        vm = self._vm
        with LIVE.vm_guard(self._conn.vm_key(vm)):
            self._check_snapshots(vm)
            for disk in _inventory.disks(vm.config):
                refusal = disk.read_refusal()
                if refusal:
                    raise ProviderError(refusal)
            LIVE.register(self.session_id, self.name)  # before it exists: never a leftover
            # Removed, or given up on: what is left is then a leftover of this process,
            # which the next export of the VM removes.
            self._cleanup.push(f"forget snapshot {self.name}", lambda: LIVE.unregister(self.name))
            # Pushed before the create call: an interrupted create may still leave it.
            self._cleanup.push(f"remove snapshot {self.name}", self._remove_snapshot)
            self._snapshot = _snapshots.create(
                vm, self.name, self.session_id, quiesce=self._quiesce
            )
        disks = _inventory.disks(self._snapshot.config, _inventory.vm_cbt_reason(vm))
        if not disks:
            raise ProviderError(f"VM {vm.name} has no virtual disks")
        for disk in disks:
            refusal = disk.read_refusal()
            if refusal:
                raise ProviderError(refusal)
        self._check_since(disks)
        if self._read_data:
            client = _reader.make_client(
                self._conn.session_cookie(), ssl_context=self._conn.ssl_context, pool=self._pool
            )
            self._client = client
            self._cleanup.push("close the HTTP client", client.close)
        dc_path = _inventory.datacenter_path(vm) if self._read_data else ""
        for disk in disks:
            self._disks.append(self._disk_snapshot(disk, dc_path))

    def _check_snapshots(self, vm: Any) -> None:
        """Sweep (export) or only look (estimate); then the VM must have no snapshot."""
        now, max_age = self._conn.server_time, self._conn.foreign_snapshot_max_age
        if self._sweep:
            for msg in _snapshots.remove_leftovers(vm, now=now, max_age=max_age):
                self._say(msg)
        else:
            found = _snapshots.ours(vm, now=now, max_age=max_age)
            busy = [f for f in found if f.busy]
            if busy:
                raise _snapshots.busy_error(vm, busy[0])
            if found:
                f = found[0]
                raise ProviderError(
                    f"VM {vm.name} has snapshot {f.name} left by an interrupted earlier run "
                    f"({f.left_by}); the next export removes it, an estimate removes nothing"
                )
        others = [str(n.name) for n in _inventory.snapshot_tree(vm)]
        if others:
            raise ProviderError(
                f"VM {vm.name} already has snapshots ({', '.join(others[:3])}): its disks are "
                "delta disks, which cannot be read over HTTPS; delete or consolidate the "
                "snapshots, then export again"
            )

    def _check_since(self, disks: list[VsphereDisk]) -> None:
        if self._since is None:
            return
        current = {d.key: d.change_id for d in disks}
        # every disk of the last export and every disk now: one added or gone breaks it
        for key in [*self._since, *(k for k in current if k not in self._since)]:
            verdict = _changeid.check(
                key, self._since.get(key, ""), current.get(key), tracking=True
            )
            if not verdict.valid:
                raise ChangeIdInvalid(verdict.reason)

    def _areas(self, disk: VsphereDisk, since: str) -> list[Any]:
        areas, calls = _changed.changed_areas(
            self._vm, self._snapshot, disk.device_key, disk.capacity, since, disk.key
        )
        self.query_calls += calls
        return areas

    def _disk_snapshot(self, disk: VsphereDisk, dc_path: str) -> FrozenDisk:
        changed: list[Any] | None
        reported: list[Any] | None = None
        if disk.change_id:
            since = self._since.get(disk.key) if self._since is not None else None
            changed = self._areas(disk, since or _changed.ALLOCATED)
            if since and self._audit:
                # The audit reads what a full export reads and keeps CBT's answer aside.
                reported, changed = changed, self._areas(disk, _changed.ALLOCATED)
        else:
            # No tracking on this disk (CBT off or not yet active): a full export reads
            # every byte; the engine stores all-zero blocks as zero.
            changed = None
        reader: Any = None
        if self._client is not None:
            ds, path = disk.flat_path()
            url = _reader.folder_url(self._conn.endpoint.netloc, dc_path, ds, path)
            reader = _reader.HttpRangeReader(
                self._client, url, disk.capacity, disk.key, extents=changed
            )
        return FrozenDisk(
            key=disk.key,
            capacity_bytes=disk.capacity,
            change_id=disk.change_id,
            changed=changed,
            reader=reader,
            path=disk.file_name,
            backing_info=disk.backing_type,
            reported=reported,
        )

    # -- teardown ------------------------------------------------------------------
    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        errors = self._cleanup.run()
        if errors and not failed:
            raise ProviderError("backup session cleanup failed: " + "; ".join(errors))

    def _remove_snapshot(self) -> None:
        try:
            self._remove_snapshot_once()
        except Exception:
            raise
        except BaseException:  # Ctrl-C during removal: try once more, then stop
            try:
                self._remove_snapshot_once()
            except Exception as again:
                log.warning("removing snapshot %s once more failed: %s", self.name, again)
            raise

    def _remove_snapshot_once(self) -> None:
        with self._conn.translate(f"removing snapshot {self.name} of VM {self._vm.name}"):
            if self._snapshot is not None:
                _snapshots.remove(self._snapshot, self.name)
            else:
                _snapshots.remove_by_name(self._vm, self.name)

    def __enter__(self) -> VsphereBackupSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)
