"""Find and remove what a failed backup session of this tool left in this QEMU.

A session's exports, jobs and fleecing nodes are named ``hypersdk-<sid>-<i>-<what>``
(``sid`` = our pid, ``x``, 4 hex digits) and its files live in a private temp folder
``<tmp>/hypersdk-qemu-<pid>-<4 hex>-<random>``. If the session dies without its
teardown, its sync=none backup job would keep copying every guest write into a fleecing
file nobody reads, for as long as the VM runs. The next session on the same QEMU
removes it. Names only say where to look; what proves a leftover is the marker.

Proof, not names. Before it creates anything in QEMU, a session writes a marker file
``session.json`` into its folder (folder 0700, marker 0600, both ours)::

    {"format": 1, "kind": "qmp", "session": "4242x1a2b",
     "maker": {"pid": 4242, "start": 123456, "pidns": 4026531836},
     "qemu": {"pid": 777, "start": 98765, "uid": 0, "qmp_path": "/run/vm.qmp",
              "qmp_dev": 64768, "qmp_ino": 131}}

``maker`` is the session's process (start = start time in clock ticks since boot, from
``/proc/<pid>/stat``, so a reused pid is not mistaken for it); ``qemu`` is the process
that listens on the QMP socket, from ``SO_PEERCRED`` of our QMP connection, and the
socket file's device and inode. A leftover is swept only when ALL hold:

- its folder is a real directory (``lstat``, not a symlink) owned by our uid, and its
  marker a regular file owned by us that parses and names the folder's session;
- its maker is gone: the pid is dead, a zombie, or another process (other start time);
  or it is our own process (a daemon runs many sessions) and the session is not in
  :data:`LIVE`, the registry of this process's running sessions;
- its QEMU is the one we talk to (same pid, start time and QMP socket inode).

A folder without a marker, with a marker for another QEMU, of another owner, or whose
maker may be alive is never touched, nor is anything in QEMU named after it.

NBD server. QEMU runs one NBD server. It is stopped only when a leftover session of this
QEMU started it: the folder's ``nbd.sock`` is a socket that this QEMU listens on (its
``SO_PEERCRED`` pid is the QEMU's) and, once that session's exports are gone, no other
NBD export is left on it. Any other server is never stopped: the export asks for
``?nbd=`` instead.

Orphans. A folder whose QEMU no longer exists (or of an offline ``qcow2`` session, which
has no QEMU), whose maker is gone and which is ours is removed: nothing in it can belong
to anyone else.

Limits: pids are compared only within our pid namespace (the marker records it; another
namespace is never judged); when the QMP socket was opened by another process and passed
to QEMU (libvirt), ``SO_PEERCRED`` names that process: leftovers are still matched by
socket inode, but the NBD server, which QEMU itself opened, is then never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypersdk.errors import UsageError
from hypersdk.providers.qemu._qmp import QmpCommandError, QmpConnection

log = logging.getLogger(__name__)

MARKER = "session.json"
FORMAT = 1
FOLDER_PREFIX = "hypersdk-qemu-"
_NAME = re.compile(r"^hypersdk-(\d+x[0-9a-f]+)-\d+-(fleece|job|export|bitmap)$")
_FOLDER = re.compile(r"^hypersdk-qemu-(\d+)-([0-9a-f]{4})-[A-Za-z0-9_]+$")
_SID = re.compile(r"^\d+x[0-9a-f]{4}$")
_MARKER_MAX = 4096
_UNKNOWN = -1  # a process we may not look at: alive as far as we can tell
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _LiveSessions:
    """Session ids of this process whose teardown has not run yet (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def new_id(self) -> str:
        """Register and return a fresh id: our pid, then randomness. QEMU node names
        hold at most 31 characters: "hypersdk-" + 7-digit pid + "x" + 4 hex + "-NN-fleece"
        is 31. An id still live or still named by a leftover folder is not reused."""
        with self._lock:
            while True:
                sid = f"{os.getpid()}x{secrets.token_hex(2)}"
                taken = any(Path(tempfile.gettempdir()).glob(f"{_folder_prefix(sid)}*"))
                if sid not in self._ids and not taken:
                    self._ids.add(sid)
                    return sid

    def end(self, sid: str) -> None:
        with self._lock:
            self._ids.discard(sid)

    def __contains__(self, sid: object) -> bool:
        with self._lock:
            return sid in self._ids


def _folder_prefix(sid: str) -> str:
    """``hypersdk-qemu-<pid>-<hex>-``: the session id with its ``x`` as a dash."""
    return FOLDER_PREFIX + sid.replace("x", "-") + "-"


LIVE = _LiveSessions()
"""The process-wide registry of running sessions (the only module-level state)."""


# --- processes ----------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot); None if there is no such process
    or it is a zombie; _UNKNOWN if we may not look."""
    if pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return _UNKNOWN
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and ")"
    try:
        state, start = fields[0], int(fields[19])
    except (IndexError, ValueError):
        return _UNKNOWN
    return None if state in ("Z", "X") else start


def _pidns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _gone(pid: int, start: int) -> bool:
    """Whether the process that had ``pid`` and ``start`` no longer runs (with an
    unknown start time only a dead pid counts)."""
    now = _start_time(pid)
    if now is None:
        return True
    return _UNKNOWN not in (now, start) and now != start


# --- identities and markers ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QemuId:
    """The QEMU behind a QMP connection, as the marker records it."""

    pid: int
    start: int
    uid: int
    qmp_path: str
    qmp_dev: int
    qmp_ino: int

    def same(self, other: QemuId) -> bool:
        """The same QEMU process through the same QMP socket (the path may differ)."""
        mine = (self.pid, self.start, self.qmp_dev, self.qmp_ino)
        return mine == (other.pid, other.start, other.qmp_dev, other.qmp_ino)


def qemu_id(qmp: QmpConnection) -> QemuId | None:
    """Who serves ``qmp``, or None when the kernel cannot tell (another pid namespace):
    then nothing of this QEMU is ever swept or stopped."""
    peer = qmp.peer
    if peer is None or peer.pid <= 0:
        return None
    start = _start_time(peer.pid)
    if start is None or start == _UNKNOWN:
        return None
    return QemuId(peer.pid, start, peer.uid, peer.path, peer.dev, peer.ino)


@dataclass(frozen=True, slots=True)
class Marker:
    session: str
    kind: str  # "qmp" (a running QEMU) or "qcow2" (qemu-nbd on an offline image)
    maker_pid: int
    maker_start: int
    maker_pidns: int | None
    qemu: QemuId | None


def make_folder(sid: str, kind: str, qemu: QemuId | None) -> str:
    """Create the session's private temp folder and its marker; returns the path."""
    folder = tempfile.mkdtemp(prefix=_folder_prefix(sid))
    os.chmod(folder, 0o700)
    me = _start_time(os.getpid())
    doc: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "session": sid,
        "maker": {"pid": os.getpid(), "start": me if me is not None else _UNKNOWN},
        "qemu": None,
    }
    doc["maker"]["pidns"] = _pidns()
    if qemu is not None:
        doc["qemu"] = {
            "pid": qemu.pid,
            "start": qemu.start,
            "uid": qemu.uid,
            "qmp_path": qemu.qmp_path,
            "qmp_dev": qemu.qmp_dev,
            "qmp_ino": qemu.qmp_ino,
        }
    fd = os.open(
        os.path.join(folder, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
    )
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
    return folder


QEMU_DIR = "qemu"  # the subfolder a QEMU of another user works in


def qemu_folder(folder: str, qemu: QemuId | None) -> str:
    """Where QEMU creates its NBD socket and opens the fleecing files: the session folder
    itself when QEMU runs as us; else its subfolder ``qemu/``, owned by QEMU's user (from
    SO_PEERCRED) and mode 0700, while the session folder becomes 0711 (QEMU passes
    through, nobody lists it; the marker stays ours, 0600)."""
    if qemu is None or qemu.uid == os.geteuid():
        return folder
    if os.geteuid() != 0:
        raise UsageError(
            f"QEMU runs as uid {qemu.uid} and cannot use a folder of uid {os.geteuid()}: "
            "run the export as root or as QEMU's user"
        )
    inner = os.path.join(folder, QEMU_DIR)
    os.mkdir(inner, 0o700)
    os.chown(inner, qemu.uid, -1)
    os.chmod(folder, 0o711)
    return inner


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("not an integer")
    return value


def _parse(doc: Any) -> Marker:
    maker, qemu = doc["maker"], doc["qemu"]
    if doc["format"] != FORMAT or doc["kind"] not in ("qmp", "qcow2"):
        raise ValueError("unknown marker")
    pidns = maker.get("pidns")
    ident = None
    if qemu is not None:
        ident = QemuId(
            _int(qemu["pid"]),
            _int(qemu["start"]),
            _int(qemu["uid"]),
            str(qemu["qmp_path"]),
            _int(qemu["qmp_dev"]),
            _int(qemu["qmp_ino"]),
        )
    return Marker(
        session=str(doc["session"]),
        kind=str(doc["kind"]),
        maker_pid=_int(maker["pid"]),
        maker_start=_int(maker["start"]),
        maker_pidns=None if pidns is None else _int(pidns),
        qemu=ident,
    )


def _owned(st: os.stat_result, kind: int) -> bool:
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid()


def read_marker(folder: Path) -> Marker | None:
    """The folder's marker if the folder and the marker are ours and well-formed."""
    match = _FOLDER.match(folder.name)
    if match is None:
        return None
    try:
        if not _owned(os.lstat(folder), stat.S_IFDIR):
            return None
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not _owned(st, stat.S_IFREG) or st.st_size > _MARKER_MAX:
                return None
            marker = _parse(json.loads(f.read(_MARKER_MAX)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if marker.session != f"{match.group(1)}x{match.group(2)}" or not _SID.match(marker.session):
        return None
    return marker


def _maker_gone(marker: Marker) -> bool:
    if marker.maker_pidns is None or marker.maker_pidns != _pidns():
        return False  # another pid namespace: its pids mean nothing here
    if marker.maker_pid == os.getpid() and marker.maker_start == _start_time(os.getpid()):
        return marker.session not in LIVE  # ours: a failed session of this process
    return _gone(marker.maker_pid, marker.maker_start)


def _qemu_gone(marker: Marker) -> bool:
    if marker.kind == "qcow2":
        return True  # no QEMU: qemu-nbd dies with its parent
    q = marker.qemu
    return q is not None and marker.maker_pidns == _pidns() and _gone(q.pid, q.start)


@dataclass(slots=True)
class Leftovers:
    """Dead sessions' folders: of the QEMU we talk to, and of no QEMU any more."""

    ours: dict[str, Path] = field(default_factory=dict)  # session id -> folder
    orphans: list[Path] = field(default_factory=list)


def find(qemu: QemuId | None) -> Leftovers:
    found = Leftovers()
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.startswith(FOLDER_PREFIX):
            continue
        marker = read_marker(entry)
        if marker is None or not _maker_gone(marker):
            continue
        same = qemu is not None and marker.qemu is not None and qemu.same(marker.qemu)
        if marker.kind == "qmp" and same:
            found.ours[marker.session] = entry
            continue
        if _qemu_gone(marker):
            found.orphans.append(entry)
    return found


# --- sweeping -----------------------------------------------------------------------


@dataclass(slots=True)
class Swept:
    removed: list[str] = field(default_factory=list)
    kept_nbd_socket: str | None = None  # a dead session's NBD server that serves others


def _session_of(name: object) -> str | None:
    match = _NAME.match(str(name))
    return match.group(1) if match else None


def _listener_pid(path: Path) -> int | None:
    """The pid listening on the unix socket ``path`` (not a symlink), or None. The socket
    lies in a folder of ours (0700), so only we or the QEMU we gave the path made it."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid: int = _UCRED.unpack(creds)[0]
    return pid


def _remaining(qmp: QmpConnection, sids: set[str]) -> set[str]:
    """Sessions among ``sids`` that still have an export, job or node in QEMU."""
    names = [e.get("id") for e in qmp.execute("query-block-exports")]
    names += [j.get("device") for j in qmp.execute("query-block-jobs")]
    names += [n.get("node-name") for n in qmp.execute("query-named-block-nodes", {"flat": True})]
    return {sid for sid in map(_session_of, names) if sid in sids}


def sweep(qmp: QmpConnection, qemu: QemuId | None) -> Swept:
    """Remove what dead sessions of this tool left in this QEMU, and orphan folders."""
    found = find(qemu)
    done = Swept()
    sids = set(found.ours)
    if sids:
        _remove_objects(qmp, sids, done)
        live_sockets = _nbd_server(qmp, qemu, found, done)
        left = _remaining(qmp, sids)
        for sid, folder in found.ours.items():
            if sid in left or sid in live_sockets:
                continue  # still needed: the proof for the next sweep, or a live socket
            shutil.rmtree(folder, ignore_errors=True)
            done.removed.append(f"temp folder {folder}")
    for folder in found.orphans:
        shutil.rmtree(folder, ignore_errors=True)
        done.removed.append(f"temp folder {folder}")
    if done.removed:
        log.warning("removed leftovers of a failed backup: %s", ", ".join(done.removed))
    return done


def sweep_orphans() -> None:
    """Remove orphan folders only (an offline session has no QEMU to sweep)."""
    for folder in find(None).orphans:
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed leftovers of a failed backup: temp folder %s", folder)


def _remove_objects(qmp: QmpConnection, sids: set[str], done: Swept) -> None:
    for export in qmp.execute("query-block-exports"):
        if _session_of(export.get("id")) in sids:
            with contextlib.suppress(QmpCommandError):
                qmp.execute("block-export-del", {"id": export["id"], "mode": "hard"})
            done.removed.append(f"export {export['id']}")
    for job in qmp.execute("query-block-jobs"):
        if _session_of(job.get("device")) in sids:
            with contextlib.suppress(QmpCommandError):
                qmp.execute("block-job-cancel", {"device": job["device"], "force": True})
            done.removed.append(f"job {job['device']}")
    _wait(qmp, "query-block-exports", "id", sids)
    _wait(qmp, "query-block-jobs", "device", sids)
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        name = node.get("node-name")
        if _session_of(name) in sids and str(name).endswith("-fleece"):
            with contextlib.suppress(QmpCommandError):
                qmp.execute("blockdev-del", {"node-name": name})
                done.removed.append(f"fleecing node {name}")


def _nbd_server(qmp: QmpConnection, qemu: QemuId | None, found: Leftovers, done: Swept) -> set[str]:
    """Stop this QEMU's NBD server if a dead session of ours started it and nobody else
    uses it; returns the sessions whose ``nbd.sock`` is still served."""
    live: set[str] = set()
    for sid, folder in found.ours.items():
        sock = folder / "nbd.sock"
        if _listener_pid(sock) is None:
            sock = folder / QEMU_DIR / "nbd.sock"  # a QEMU of another user made it there
        pid = _listener_pid(sock)
        if pid is None:
            continue
        live.add(sid)
        if qemu is None or pid != qemu.pid:
            continue  # someone listens there, but we cannot prove it is this QEMU
        others = [e for e in qmp.execute("query-block-exports") if e.get("type") == "nbd"]
        if others:
            done.kept_nbd_socket = str(sock)
            log.warning(
                "the NBD server a failed backup started at %s also serves %s: left running",
                sock,
                ", ".join(str(e.get("id")) for e in others),
            )
            continue
        try:
            qmp.execute("nbd-server-stop")
        except QmpCommandError as err:
            log.warning("cannot stop the NBD server a failed backup left: %s", err.desc)
            continue
        live.discard(sid)
        done.removed.append(f"NBD server {sock}")
    return live


def _wait(qmp: QmpConnection, query: str, key: str, sids: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_session_of(item.get(key)) in sids for item in qmp.execute(query)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
