"""Backup sessions of a libvirt domain.

Running domain: ONE ``virDomainBackupBegin`` in pull mode creates the new checkpoint and
freezes every disk at the same instant; libvirt has QEMU serve each frozen disk over NBD
on a unix socket in our session folder, with the changes since the previous checkpoint
as the bitmap ``backup-<disk>`` (``incremental``) or none (``full``). ``virDomainAbortJob``
ends it. Shut-off domain: the checkpoint's bitmap is added to each qcow2 image with
``qemu-img`` and recorded in libvirt (``REDEFINE``: libvirt 9 cannot create a checkpoint
of an inactive domain, but accepts one it is told about); ``qemu-nbd`` serves the image
with the previous checkpoint's bitmap.

Teardown on every exit (errors and Ctrl-C too): NBD clients, the job (aborted, then
waited for), the folder; a session that fails also deletes its new checkpoint, so the
previous one stays the valid change id.

Folders. ``<tmp>/hypersdk-libvirt-<pid>-<hex>-<random>`` is ours (0711: QEMU may pass
through, nobody may list it) and holds the marker ``session.json`` (0600) naming the
maker process, the domain, the connection and the new checkpoint. QEMU creates the NBD
socket and libvirt the scratch files in its subfolder ``qemu/``, owned by the user QEMU
runs as (from the domain's DAC label) and mode 0700. A leftover of a crashed run (marker
ours, maker gone, same domain) is swept by the next session: its job is aborted only
when the job's socket lies in that folder, and its checkpoint is deleted only when it is
named as ours. A job we cannot prove to be ours is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from hypersdk.errors import (
    ChangeIdInvalid,
    ConflictError,
    NbdError,
    ProviderError,
    UsageError,
)
from hypersdk.nbd import NbdPool
from hypersdk.providers.cleanup import CleanupStack
from hypersdk.providers.libvirt import _connect, _domain
from hypersdk.providers.libvirt._connect import calling
from hypersdk.providers.qemu import _checkpoints, _stale, _tools
from hypersdk.providers.qemu import _session as _qemu_session
from hypersdk.providers.qemu._session import _SessionBase, frozen_disk

log = logging.getLogger(__name__)

FOLDER_PREFIX = "hypersdk-libvirt-"
MARKER = "session.json"
QEMU_DIR = "qemu"
JOB_WAIT = 30.0
_FOLDER = re.compile(r"^hypersdk-libvirt-(\d+)-([0-9a-f]{4})-[A-Za-z0-9_]+$")


@dataclass(frozen=True, slots=True)
class Target:
    """The domain a session works on."""

    dom: Any  # libvirt.virDomain
    uuid: str
    uri: str
    disks: list[_domain.Disk]


def _connect_nbd(uri: str, export: str, bitmap: str) -> NbdPool:
    """The QEMU session's connections (base:allocation and the bitmap's context)."""
    try:
        return _qemu_session._connect_nbd(uri, export, bitmap)
    except OSError as err:
        raise NbdError(f"cannot connect to {uri} export {export}: {err}") from err


# --- session folders and their markers ------------------------------------------------


def _make_folder(sid: str, target: Target, checkpoint: str, owner: tuple[int, int] | None) -> str:
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX + sid.replace("x", "-") + "-")
    me = _stale._start_time(os.getpid())
    doc = {
        "format": 1,
        "session": sid,
        "maker": {"pid": os.getpid(), "start": me if me is not None else -1},
        "pidns": _stale._pidns(),
        "domain": target.uuid,
        "uri": target.uri,
        "checkpoint": checkpoint,
    }
    fd = os.open(
        os.path.join(folder, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
    )
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
    if owner is not None:
        os.chmod(folder, 0o711)  # QEMU passes through to its own subfolder, lists nothing
        inner = os.path.join(folder, QEMU_DIR)
        os.mkdir(inner, 0o700)
        _give(inner, owner)
    return folder


def _give(path: str, owner: tuple[int, int]) -> None:
    """Hand ``path`` to the QEMU user: chown as root; else share it through QEMU's group
    when we are in it; else say why it cannot work."""
    uid, gid = owner
    if uid == os.geteuid():
        return
    try:
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
            return
        if gid in os.getgroups():
            os.chown(path, -1, gid)
            os.chmod(path, 0o770)
            return
    except OSError as err:
        raise ProviderError(f"cannot hand {path} to QEMU's user {uid}: {err}") from err
    raise UsageError(
        f"QEMU runs as uid {uid} and cannot use a folder of uid {os.geteuid()}: run the "
        f"export as root, or as a member of QEMU's group {gid}"
    )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker when the folder and marker are ours and well-formed; never
    raises (another user's folder is simply not ours)."""
    match = _FOLDER.match(folder.name)
    if match is None:
        return None
    try:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return None
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            mst = os.fstat(f.fileno())
            if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.geteuid():
                return None
            doc = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("session") != f"{match[1]}x{match[2]}":
        return None
    return doc


def _maker_gone(doc: dict[str, Any]) -> bool:
    try:
        pid, start = int(doc["maker"]["pid"]), int(doc["maker"]["start"])
    except (KeyError, TypeError, ValueError):
        return False
    if doc.get("pidns") != _stale._pidns():
        return False  # another pid namespace: its pids mean nothing here
    if pid == os.getpid() and start == _stale._start_time(pid):
        return doc.get("session") not in _stale.LIVE
    return _stale._gone(pid, start)


def _active_backup(dom: Any) -> str | None:
    """The running backup job's XML, or None when the domain runs none."""
    lv = _connect.lib()
    try:
        return str(dom.backupGetXMLDesc(0))
    except lv.libvirtError:
        return None


def _wait_job_gone(dom: Any) -> None:
    deadline = time.monotonic() + JOB_WAIT
    while _active_backup(dom) is not None:
        if time.monotonic() > deadline:
            raise ProviderError(f"the backup job still runs {JOB_WAIT:g} s after its abort")
        time.sleep(0.05)


def _abort(dom: Any, sock: str) -> None:
    """Abort the domain's backup job if it is the one serving ``sock`` (ours)."""
    lv = _connect.lib()
    job = _active_backup(dom)
    if job is None or _domain.backup_socket(job) != sock:
        return  # no job, or not ours: never touched
    with contextlib.suppress(lv.libvirtError):  # ended on its own meanwhile
        dom.abortJob()
    _wait_job_gone(dom)


def _delete_checkpoint(dom: Any, name: str) -> None:
    lv = _connect.lib()
    try:
        cp = dom.checkpointLookupByName(name)
    except lv.libvirtError:
        return  # already gone
    with calling(f"deleting checkpoint {name}"):
        cp.delete(0)


def sweep(target: Target) -> list[str]:
    """Remove what crashed sessions of this tool left on this domain; returns what."""
    removed: list[str] = []
    job = _active_backup(target.dom) if target.dom.isActive() else None
    job_socket = _domain.backup_socket(job) if job else ""
    for folder in sorted(Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*")):
        doc = _read_marker(folder)
        if doc is None or doc.get("domain") != target.uuid or doc.get("uri") != target.uri:
            continue
        if not _maker_gone(doc):
            continue
        if job_socket and job_socket.startswith(f"{folder}{os.sep}"):
            _abort(target.dom, job_socket)
            removed.append("its backup job")
            job_socket = ""
            name = str(doc.get("checkpoint", ""))
            if _checkpoints.is_ours(name):
                _delete_checkpoint(target.dom, name)
                removed.append(f"its checkpoint {name}")
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(f"temp folder {folder}")
    if removed:
        log.warning("removed leftovers of a failed backup: %s", ", ".join(removed))
    if job is not None and job_socket:
        raise ConflictError(
            "the domain runs a backup job that this tool did not start (or whose maker "
            "still runs); it is left alone: wait for it or abort it (virsh domjobabort)"
        )
    return removed


def _backing(disk: _domain.Disk) -> str:
    return f"{disk.format} libvirt disk {disk.key}"


# --- the sessions ---------------------------------------------------------------------


class _DomainSession(_SessionBase):
    """What both kinds of session of one domain hold: the target, the change ids to
    read since (per disk), whether it is an audit, and the checkpoint it will create."""

    def __init__(
        self, target: Target, since: Mapping[str, str] | None, audit: bool = False
    ) -> None:
        super().__init__()
        self._t = target
        self._since = dict(since or {})
        self._audit = audit
        self.checkpoint = _checkpoints.new_name()

    def start(self) -> Self:
        self._begin(self._start)
        return self

    @abstractmethod
    def _start(self) -> None:
        """Build the session (each kind its own way); ``_begin`` undoes it on failure."""


class PullBackupSession(_DomainSession):
    """A running domain, through ``virDomainBackupBegin`` in pull mode."""

    def _start(self) -> None:
        t = self._t
        sweep(t)
        with calling("reading the domain"):
            owner = _domain.dac_owner(t.dom.XMLDesc(0))
        self.tmpdir = _make_folder(self.session_id, t, self.checkpoint, owner)
        sockdir = os.path.join(self.tmpdir, QEMU_DIR) if owner else self.tmpdir
        sock = os.path.join(sockdir, "nbd.sock")
        # The undo steps first: a Ctrl-C right after backupBegin returns must not leave
        # the job running. Both only act on what carries our names.
        self._on_failure.push(
            f"delete checkpoint {self.checkpoint}",
            functools.partial(_delete_checkpoint, t.dom, self.checkpoint),
        )
        self._cleanup.push("abort the backup job", functools.partial(_abort, t.dom, sock))
        lv = _connect.lib()
        try:
            t.dom.backupBegin(self._backup_xml(sock, sockdir), self._checkpoint_xml(), 0)
        except lv.libvirtError as err:
            text = str(err)
            if self._since and ("checkpoint" in text or "bitmap" in text):
                # libvirt refused the previous checkpoint: the engine starts anew (full)
                raise ChangeIdInvalid(f"libvirt refused the previous checkpoint: {text}") from err
            raise _connect.translate(err, "starting the backup job") from err
        with calling("reading the backup job"):
            exports = _domain.backup_exports(t.dom.backupGetXMLDesc(0))
        for disk in t.disks:
            export, bitmap = exports.get(disk.key, (disk.key, ""))
            if disk.key in self._since and not bitmap:
                raise ProviderError(f"disk {disk.key}: libvirt exported no dirty bitmap")
            client = _connect_nbd(f"unix:{sock}", export, bitmap)
            self._add_client(client)
            self._disks.append(
                frozen_disk(disk, client, self.checkpoint, bitmap, self._audit, _backing(disk))
            )

    def _backup_xml(self, sock: str, sockdir: str) -> str:
        disks = []
        for d in self._t.disks:
            since = self._since.get(d.key)
            mode = (
                f"backupmode='incremental' incremental='{_esc(since)}'"
                if since
                else ("backupmode='full'")
            )
            scratch = os.path.join(sockdir, f"scratch-{d.key}.qcow2")
            disks.append(
                f"<disk name='{_esc(d.key)}' backup='yes' type='file' {mode}>"
                f"<driver type='qcow2'/><scratch file='{_esc(scratch)}'/></disk>"
            )
        return (
            f"<domainbackup mode='pull'><server transport='unix' socket='{_esc(sock)}'/>"
            f"<disks>{''.join(disks)}</disks></domainbackup>"
        )

    def _checkpoint_xml(self) -> str:
        disks = "".join(f"<disk name='{_esc(d.key)}' checkpoint='bitmap'/>" for d in self._t.disks)
        return (
            f"<domaincheckpoint><name>{self.checkpoint}</name>"
            f"<disks>{disks}</disks></domaincheckpoint>"
        )


class OfflineBackupSession(_DomainSession):
    """A shut-off domain: its qcow2 images through ``qemu-nbd``."""

    def _start(self) -> None:
        t = self._t
        sweep(t)
        self.tmpdir = _make_folder(self.session_id, t, self.checkpoint, None)
        self._add_checkpoint()
        for disk in t.disks:
            since = self._since.get(disk.key) or ""
            server = _tools.QemuNbd(
                disk.file, os.path.join(self.tmpdir, f"nbd-{disk.key}.sock"), disk.key, since
            )
            server.start()
            self._cleanup.push(f"stop qemu-nbd of {disk.key}", server.stop)
            client = _connect_nbd(server.uri, disk.key, since)
            self._add_client(client)
            self._disks.append(
                frozen_disk(disk, client, self.checkpoint, since, self._audit, _backing(disk))
            )

    def _add_checkpoint(self) -> None:
        add_offline_checkpoint(self._t, self.checkpoint, self._on_failure)


def add_offline_checkpoint(t: Target, name: str, undo: CleanupStack) -> None:
    """A checkpoint of a shut-off domain: a bitmap in every image, then libvirt's record
    of it. Each step pushes its undo onto ``undo``."""
    lv = _connect.lib()
    for disk in t.disks:
        _tools.bitmap(disk.file, name, "--add")
        undo.push(
            f"remove bitmap {name} of {disk.key}",
            functools.partial(_tools.bitmap, disk.file, name, "--remove"),
        )
    with calling("reading the domain"):
        dom_xml = t.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)
        current = _latest_name(t.dom)
    parent = f"<parent><name>{_esc(current)}</name></parent>" if current else ""
    disks = "".join(
        f"<disk name='{_esc(d.key)}' checkpoint='bitmap' bitmap='{name}'/>" for d in t.disks
    )
    xml = (
        f"<domaincheckpoint><name>{name}</name>{parent}"
        f"<creationTime>{int(time.time())}</creationTime><disks>{disks}</disks>"
        f"{dom_xml}</domaincheckpoint>"
    )
    with calling("recording the checkpoint in libvirt"):
        t.dom.checkpointCreateXML(xml, lv.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
    undo.push(f"forget checkpoint {name}", functools.partial(forget_checkpoint, t.dom, name))


def _latest_name(dom: Any) -> str:
    """The newest checkpoint (libvirt's "current" is the leaf created last)."""
    lv = _connect.lib()
    leaves = dom.listAllCheckpoints(lv.VIR_DOMAIN_CHECKPOINT_LIST_LEAVES)
    best = ("", -1)
    for cp in leaves:
        info = _domain.checkpoint(cp.getXMLDesc(lv.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN))
        if info.created > best[1]:
            best = (info.name, info.created)
    return best[0]


def forget_checkpoint(dom: Any, name: str) -> None:
    """Delete an inactive domain's checkpoint: libvirt 9 only drops its record there,
    so the bitmaps go with ``qemu-img``."""
    lv = _connect.lib()
    try:
        cp = dom.checkpointLookupByName(name)
    except lv.libvirtError:
        return
    info = _domain.checkpoint(cp.getXMLDesc(0))
    with calling(f"deleting checkpoint {name}"):
        cp.delete(lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    for disk, bitmap in info.bitmaps.items():
        path = info.files.get(disk, "")
        if path:
            with contextlib.suppress(ProviderError):  # the bitmap may be gone already
                _tools.bitmap(path, bitmap, "--remove")


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
    )


def require_valid(check: Any, disks: list[_domain.Disk], since: Mapping[str, str]) -> None:
    for key, change_id in since.items():
        verdict = check(key, change_id)
        if not verdict.valid:
            raise ChangeIdInvalid(f"disk {key}: {verdict.reason}")
