"""Point-in-time backup sessions, the way libvirt's pull-mode backup works.

Live (QMP), per disk, in ONE ``transaction`` so all disks freeze at the same instant:

1. ``block-dirty-bitmap-add`` the NEW checkpoint (persistent) on the disk node;
2. incremental only: ``block-dirty-bitmap-add`` a disabled temporary bitmap on the
   fleecing node and ``block-dirty-bitmap-merge`` the previous checkpoint into it
   (an enabled bitmap cannot be exported read-only);
3. ``blockdev-backup sync=none`` from the disk to the fleecing node, a qcow2 overlay
   in a private temp folder whose backing is the disk: from now on every guest write
   first copies the old data into the overlay, so the overlay reads as the disk did at
   the transaction.

Then ``block-export-add`` (NBD, read-only) of each fleecing node with its temporary
bitmap, and one NBD client per disk.

Offline (qcow2 file, nobody writes): add the new checkpoint with ``qemu-img bitmap``,
then serve the image with ``qemu-nbd --read-only --bitmap=<previous checkpoint>``.

Teardown runs on every exit, also on errors and Ctrl-C: clients, exports, jobs, temporary
bitmaps, fleecing nodes, NBD server (if we started it) and temp files go; if the session
ends with an exception the NEW checkpoint is removed too, so the previous one stays the
valid change id. If a teardown step fails (QEMU gone away, QMP lost), the temp folder
and its marker stay: they prove to the next session on this QEMU that the rest is a
failed session's, so it can be swept (see ``_stale``), also by this same process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from hypersdk.errors import (
    CbtUnavailable,
    ChangeIdInvalid,
    ConflictError,
    NbdError,
    ProviderError,
)
from hypersdk.nbd import NbdPool
from hypersdk.providers.base import FrozenDisk
from hypersdk.providers.cleanup import CleanupStack
from hypersdk.providers.qemu import _checkpoints, _extents, _stale, _tools
from hypersdk.providers.qemu._discovery import QemuDisk
from hypersdk.providers.qemu._qmp import QmpCommandError, QmpConnection

log = logging.getLogger(__name__)

WAIT_TIMEOUT = 30.0


def _connect_nbd(uri: str, export: str, bitmap: str | None, connections: int = 4) -> NbdPool:
    """Connections to a read-only export: several when the server allows multi-conn, so
    the engine's reading threads do not queue on one socket (docs/design.md, Profile)."""
    contexts = [_extents.BASE_ALLOCATION]
    if bitmap:
        contexts.append(_extents.bitmap_context(bitmap))
    client = NbdPool.connect(
        uri, export_name=export, meta_contexts=tuple(contexts), connections=connections
    )
    missing = [c for c in contexts if c not in client.meta_contexts]
    if missing:
        client.close()
        raise NbdError(f"NBD export {export} does not offer {', '.join(missing)}")
    return client


def _backing(disk: QemuDisk) -> str:
    return f"{disk.format} node {disk.node}"


class DiskFile(Protocol):
    """What a session's disk must say of itself (a QEMU node's disk, a libvirt one)."""

    @property
    def key(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def capacity(self) -> int: ...


def frozen_disk(
    disk: DiskFile,
    client: NbdPool,
    change_id: str,
    bitmap: str | None,
    audit: bool,
    backing_info: str,
) -> FrozenDisk:
    """The FrozenDisk a session hands the engine: ``client`` checked against the disk's
    capacity, and the extents to read (and, in an audit, those reported) from its
    block status."""
    try:
        if client.size != disk.capacity:
            raise ProviderError(
                f"disk {disk.key}: export size {client.size} != capacity {disk.capacity}"
            )
        changed, reported = _extents.session_extents(client, disk.capacity, bitmap, audit)
    except OSError as err:
        raise NbdError(f"disk {disk.key}: reading block status failed: {err}") from err
    return FrozenDisk(
        key=disk.key,
        capacity_bytes=disk.capacity,
        change_id=change_id,
        changed=changed,
        reader=client,
        path=disk.file,
        backing_info=backing_info,
        reported=reported,
    )


class _SessionBase:
    """Shared life cycle: ``_start`` builds, ``__exit__`` always tears down."""

    def __init__(self) -> None:
        self._disks: list[FrozenDisk] = []
        self._cleanup = CleanupStack()
        self._on_failure = CleanupStack()  # removes the new checkpoints
        self._clients: list[NbdPool] = []
        self._closed = False
        self.tmpdir = ""
        self.session_id = ""

    @property
    def disks(self) -> list[FrozenDisk]:
        return self._disks

    def _make_tmpdir(self, kind: str, qemu: _stale.QemuId | None) -> None:
        """The private folder and its marker, before anything is created in QEMU."""
        self.tmpdir = _stale.make_folder(self.session_id, kind, qemu)

    def _add_client(self, client: NbdPool) -> None:
        self._clients.append(client)

        def close() -> None:
            with contextlib.suppress(Exception):
                client.close()

        self._cleanup.push("close NBD client", close)

    def _begin(self, start: Callable[[], None]) -> None:
        self.session_id = _stale.LIVE.new_id()
        try:
            start()
        except BaseException:
            self._teardown(failed=True)
            raise

    def _teardown(self, failed: bool) -> list[str]:
        if self._closed:
            return []
        self._closed = True
        errors: list[str] = []
        clean = False
        try:
            errors += self._cleanup.run()
            clean = not errors
        finally:
            try:
                if failed:
                    errors += self._on_failure.run()
            finally:
                self._end(clean)
        return errors

    def _end(self, clean: bool) -> None:
        if self.tmpdir and clean:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        elif self.tmpdir:
            log.warning("kept %s: the next backup of this VM removes what is left", self.tmpdir)
        _stale.LIVE.end(self.session_id)  # from now on its leftovers count as dead

    def close(self, failed: bool = False) -> None:
        errors = self._teardown(failed)
        if errors and not failed:
            raise ProviderError("backup session cleanup failed: " + "; ".join(errors))

    def __enter__(self) -> _SessionBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)


@dataclass(slots=True)
class _Plan:
    disk: QemuDisk
    since: str | None  # previous checkpoint, None for a full export
    fleece_node: str
    fleece_file: str
    job: str
    export: str
    temp_bitmap: str


class QmpBackupSession(_SessionBase):
    def __init__(
        self,
        qmp: QmpConnection,
        disks: list[QemuDisk],
        since: Mapping[str, str] | None,
        nbd_socket: str | None,
        audit: bool = False,
    ) -> None:
        super().__init__()
        self._audit = audit
        self._qmp = qmp
        self._all = disks
        self._since = dict(since or {})
        self._nbd_socket = nbd_socket
        self.checkpoint = _checkpoints.new_name()
        self._nbd_hint: str | None = None
        self._qemu_dir = ""  # where QEMU itself creates and opens files (_stale.qemu_folder)
        self._qemu_uid = os.geteuid()

    def start(self) -> QmpBackupSession:
        self._begin(self._start)
        return self

    def _start(self) -> None:
        plans = self._plan()
        qemu = _stale.qemu_id(self._qmp)
        if qemu is None:
            log.warning(
                "cannot tell which process serves %s: leftovers of failed backups on it "
                "will not be removed",
                self._qmp.socket_path,
            )
        self._nbd_hint = _stale.sweep(self._qmp, qemu).kept_nbd_socket
        self._make_tmpdir("qmp", qemu)
        self._qemu_dir = _stale.qemu_folder(self.tmpdir, qemu)
        self._qemu_uid = qemu.uid if qemu is not None else os.geteuid()
        for plan in plans:
            self._add_fleece(plan)
        self._run_transaction(plans)
        uri = self._nbd_server()
        for plan in plans:
            self._export(plan)
        for plan in plans:
            bitmap = plan.temp_bitmap if plan.since else None
            client = _connect_nbd(uri, plan.export, bitmap)
            self._add_client(client)
            self._disks.append(
                frozen_disk(
                    plan.disk, client, self.checkpoint, bitmap, self._audit, _backing(plan.disk)
                )
            )

    def _plan(self) -> list[_Plan]:
        plans = []
        for i, disk in enumerate(self._all):
            if disk.cbt_reason:
                raise CbtUnavailable(f"disk {disk.key}: cannot back up: {disk.cbt_reason}")
            since = self._since.get(disk.key)
            if since is not None:
                verdict = _checkpoints.check(disk.bitmaps, since)
                if not verdict.valid:
                    raise ChangeIdInvalid(f"disk {disk.key}: {verdict.reason}")
            base = f"hypersdk-{self.session_id}-{i}"
            plans.append(
                _Plan(
                    disk=disk,
                    since=since,
                    fleece_node=f"{base}-fleece",
                    fleece_file="",
                    job=f"{base}-job",
                    export=f"{base}-export",
                    temp_bitmap=f"{base}-bitmap",
                )
            )
        return plans

    def _add_fleece(self, plan: _Plan) -> None:
        plan.fleece_file = os.path.join(self._qemu_dir, f"fleece-{plan.disk.key}.qcow2")
        _tools.create_qcow2(plan.fleece_file, plan.disk.capacity)
        if self._qemu_uid != os.geteuid():
            os.chown(plan.fleece_file, self._qemu_uid, -1)  # QEMU opens it read-write
        self._qmp.execute(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": plan.fleece_node,
                "file": {"driver": "file", "filename": plan.fleece_file},
                "backing": plan.disk.node,
                "discard": "unmap",
            },
        )
        self._cleanup.push(
            f"remove fleecing node {plan.fleece_node}",
            lambda: self._qmp.execute("blockdev-del", {"node-name": plan.fleece_node}),
        )

    def _run_transaction(self, plans: list[_Plan]) -> None:
        actions: list[dict[str, object]] = []
        for plan in plans:
            actions.append(
                {
                    "type": "block-dirty-bitmap-add",
                    "data": {"node": plan.disk.node, "name": self.checkpoint, "persistent": True},
                }
            )
            if plan.since:
                granularity = next(b.granularity for b in plan.disk.bitmaps if b.name == plan.since)
                actions += [
                    {
                        "type": "block-dirty-bitmap-add",
                        "data": {
                            "node": plan.fleece_node,
                            "name": plan.temp_bitmap,
                            "persistent": False,
                            "disabled": True,
                            "granularity": granularity,
                        },
                    },
                    {
                        "type": "block-dirty-bitmap-merge",
                        "data": {
                            "node": plan.fleece_node,
                            "target": plan.temp_bitmap,
                            "bitmaps": [{"node": plan.disk.node, "name": plan.since}],
                        },
                    },
                ]
            actions.append(
                {
                    "type": "blockdev-backup",
                    "data": {
                        "job-id": plan.job,
                        "device": plan.disk.node,
                        "target": plan.fleece_node,
                        "sync": "none",
                        "auto-dismiss": True,
                    },
                }
            )
        self._qmp.transaction(actions)
        # the cleanup stack runs last-in first-out: cancel the job, then drop the bitmap
        for plan in plans:
            self._on_failure.push(
                f"remove new checkpoint on {plan.disk.key}",
                functools.partial(self._remove_bitmap, plan.disk.node, self.checkpoint),
            )
            if plan.since:
                self._cleanup.push(
                    f"remove temporary bitmap {plan.temp_bitmap}",
                    functools.partial(self._remove_bitmap, plan.fleece_node, plan.temp_bitmap),
                )
            self._cleanup.push(
                f"cancel job {plan.job}", functools.partial(self._cancel_job, plan.job)
            )

    def _remove_bitmap(self, node: str, name: str) -> None:
        self._qmp.execute("block-dirty-bitmap-remove", {"node": node, "name": name})

    def _cancel_job(self, job: str) -> None:
        with contextlib.suppress(QmpCommandError):  # already gone
            self._qmp.execute("block-job-cancel", {"device": job, "force": True})
        self._wait_gone("query-block-jobs", "device", job)

    def _nbd_server(self) -> str:
        if self._nbd_socket:
            return f"unix:{self._nbd_socket}"
        path = os.path.join(self._qemu_dir, "nbd.sock")
        try:
            self._qmp.execute(
                "nbd-server-start", {"addr": {"type": "unix", "data": {"path": path}}}
            )
        except QmpCommandError as err:
            if "already running" in err.desc:
                # Not one a failed session of ours left (sweep() stops those): it may
                # have clients of its own, so it is never stopped.
                sock = self._nbd_hint or "/path/to/nbd.sock"
                raise ConflictError(
                    f"QEMU at {self._qmp.socket_path} already runs an NBD server that "
                    "this tool did not start; it is left alone: give its unix socket in "
                    f"the locator: qemu:{self._qmp.socket_path}?nbd={sock}"
                ) from err
            raise
        self._cleanup.push("stop NBD server", lambda: self._qmp.execute("nbd-server-stop"))
        return f"unix:{path}"

    def _export(self, plan: _Plan) -> None:
        args: dict[str, object] = {
            "type": "nbd",
            "id": plan.export,
            "node-name": plan.fleece_node,
            "name": plan.export,
            "writable": False,
        }
        if plan.since:
            args["bitmaps"] = [plan.temp_bitmap]
        self._qmp.execute("block-export-add", args)
        self._cleanup.push(f"remove export {plan.export}", lambda: self._del_export(plan.export))

    def _del_export(self, export: str) -> None:
        with contextlib.suppress(QmpCommandError):  # already gone
            self._qmp.execute("block-export-del", {"id": export, "mode": "hard"})
        self._wait_gone("query-block-exports", "id", export)

    def _wait_gone(self, query: str, key: str, value: str) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while any(item.get(key) == value for item in self._qmp.execute(query)):
            if time.monotonic() > deadline:
                raise ProviderError(f"{value} still listed by {query} after {WAIT_TIMEOUT:g} s")
            time.sleep(0.02)


class Qcow2BackupSession(_SessionBase):
    def __init__(
        self, disk: QemuDisk, since: Mapping[str, str] | None, audit: bool = False
    ) -> None:
        super().__init__()
        self._audit = audit
        self._disk = disk
        self._since = (since or {}).get(disk.key)
        self.checkpoint = _checkpoints.new_name()

    def start(self) -> Qcow2BackupSession:
        self._begin(self._start)
        return self

    def _start(self) -> None:
        disk = self._disk
        if self._since is not None:
            verdict = _checkpoints.check(disk.bitmaps, self._since)
            if not verdict.valid:
                raise ChangeIdInvalid(f"disk {disk.key}: {verdict.reason}")
        _stale.sweep_orphans()
        self._make_tmpdir("qcow2", None)
        _tools.bitmap(disk.file, self.checkpoint, "--add")
        self._on_failure.push(
            "remove new checkpoint",
            lambda: _tools.bitmap(disk.file, self.checkpoint, "--remove"),
        )
        # Nobody writes to an offline image, so the previous checkpoint can be served
        # as is: qemu-nbd --read-only accepts a recording bitmap (no temp copy needed).
        server = _tools.QemuNbd(
            disk.file, os.path.join(self.tmpdir, "nbd.sock"), "disk", self._since
        )
        server.start()
        self._cleanup.push("stop qemu-nbd", server.stop)
        client = _connect_nbd(server.uri, server.export_name, self._since)
        self._add_client(client)
        self._disks.append(
            frozen_disk(disk, client, self.checkpoint, self._since, self._audit, _backing(disk))
        )


def dirty_bytes_offline(disk: QemuDisk, bitmap: str) -> int:
    """Exact dirty byte count of an offline image's bitmap (qemu-img does not count)."""
    sid = _stale.LIVE.new_id()
    try:
        tmpdir = _stale.make_folder(sid, "qcow2", None)
        server = _tools.QemuNbd(disk.file, os.path.join(tmpdir, "nbd.sock"), "disk", bitmap)
        try:
            server.start()
            client = _connect_nbd(server.uri, "disk", bitmap, connections=1)  # block status only
            try:
                return _extents.dirty_bytes(client, bitmap, disk.capacity)
            finally:
                client.close()
        finally:
            server.stop()
            shutil.rmtree(tmpdir, ignore_errors=True)
    finally:
        _stale.LIVE.end(sid)
