"""Leftovers of failed backup sessions: only what this tool made in THIS QEMU, whose
maker is gone, is removed; anything else (another user's folder, a folder without a
marker, another QEMU's, a live session's) is never touched, and an NBD server this tool
cannot prove it started is never stopped. Real qemu-storage-daemons throughout."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.errors import ConflictError, ProviderError
from hypersdk.providers.qemu import QmpProvider, _stale, open_qemu_provider
from tests.rigs.qsd import MiB, QemuStorageDaemon


@pytest.fixture
def session_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Sessions make their folders here, not in the /tmp other test runs share. Short,
    directly in /tmp: a QMP socket of a rig started inside it must stay under the
    108-byte limit of a unix socket path whatever the pid and pytest's folder names."""
    folder = Path(tempfile.mkdtemp(prefix="hs-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def start_time(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rfind(")") + 2 :].split()[19])


def qemu_of(qsd: QemuStorageDaemon) -> dict[str, object]:
    """The marker's "qemu" record of a rig, built from what the test knows."""
    st = os.stat(qsd.qmp_path)
    return {
        "pid": qsd.pid,
        "start": start_time(qsd.pid),
        "uid": os.geteuid(),
        "qmp_path": str(qsd.qmp_path),
        "qmp_dev": st.st_dev,
        "qmp_ino": st.st_ino,
    }


def leftover(
    tmp: Path,
    sid: str,
    qemu: dict[str, object] | None,
    maker: int,
    *,
    marker: bool = True,
    name: str = "x",
    kind: str = "qmp",
) -> Path:
    """A folder as a session of ``maker`` would have left it (``nbd.sock`` included)."""
    folder = tmp / f"hypersdk-qemu-{sid.replace('x', '-')}-{name}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if not (folder / "nbd.sock").exists():
        (folder / "nbd.sock").write_bytes(b"")
    (folder / "fleece-disk0.qcow2").write_bytes(b"QFI\xfb")
    if marker:
        doc = {
            "format": 1,
            "kind": kind,
            "session": sid,
            "maker": {
                "pid": maker,
                "start": start_time(maker) if Path(f"/proc/{maker}").exists() else 1,
                "pidns": os.stat("/proc/self/ns/pid").st_ino,
            },
            "qemu": qemu,
        }
        (folder / "session.json").write_text(json.dumps(doc))
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_uid, p.lstat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


def answers(nbd_path: Path, export: str) -> bool:
    """A NEW client can connect and read (nbdinfo: the reference client)."""
    done = subprocess.run(
        ["nbdinfo", "--size", f"nbd+unix:///{export}?socket={nbd_path}"],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def state(qsd: QemuStorageDaemon) -> tuple[set[str], set[str], set[str]]:
    return qsd.node_names(), qsd.export_ids(), qsd.job_ids()


def named(qsd: QemuStorageDaemon, sid: str) -> set[str]:
    nodes, exports, jobs = state(qsd)
    return {n for n in nodes | exports | jobs if n.startswith(f"hypersdk-{sid}-")}


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as daemon:
        yield daemon


def test_session_knows_its_qemu_by_peer_credentials(qsd: QemuStorageDaemon) -> None:
    p = open_qemu_provider(qsd.locator)
    assert isinstance(p, QmpProvider)
    with p:
        ident = _stale.qemu_id(p._qmp)
    assert ident is not None
    assert (ident.pid, ident.uid) == (qsd.pid, os.geteuid())  # SO_PEERCRED
    assert ident.qmp_ino == os.stat(qsd.qmp_path).st_ino


def test_session_folder_is_private_and_marked(qsd: QemuStorageDaemon, session_tmp: Path) -> None:
    p = open_qemu_provider(qsd.locator)
    with p, p.open_backup(None) as session:
        folder = Path(session.tmpdir)
        assert folder.parent == session_tmp
        assert folder.stat().st_mode & 0o777 == 0o700
        marker = folder / "session.json"
        assert marker.stat().st_mode & 0o777 == 0o600
        doc = json.loads(marker.read_text())
        assert doc["session"] == session.session_id
        assert doc["maker"]["pid"] == os.getpid()
        assert doc["qemu"] == qemu_of(qsd)
    assert not folder.exists()


def test_foreign_leftovers_are_never_touched(tmp_path: Path, session_tmp: Path) -> None:
    """Folders named like our leftovers of a dead process, but of another user, without
    a marker, of another QEMU, or of a live maker: nothing of them is removed, and
    neither this QEMU's NBD server nor the other QEMU's is stopped."""
    dead = dead_pid()
    nobody = pwd.getpwnam("nobody")
    other_dir = session_tmp / f"hypersdk-qemu-{dead}-0b0b-other"
    live_maker = subprocess.Popen(["sleep", "60"])
    with (
        QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as qsd,
        QemuStorageDaemon(other_dir, size=16 * MiB) as other,
    ):
        this_qemu = qemu_of(qsd)
        folders = [
            # this QEMU's, dead maker, but made by another user
            leftover(session_tmp, f"{dead}x0a0a", this_qemu, dead, name="nobody"),
            # dead maker, no marker at all
            leftover(session_tmp, f"{dead}x0c0c", None, dead, marker=False, name="bare"),
            # marker of another (live) QEMU, whose live NBD server is this nbd.sock
            leftover(session_tmp, f"{dead}x0b0b", qemu_of(other), dead, name="other"),
            # this QEMU's, but its maker still runs
            leftover(session_tmp, f"{live_maker.pid}x0d0d", this_qemu, live_maker.pid),
        ]
        for path in [folders[0], *folders[0].iterdir()]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        # a node named after each foreign session: not ours to delete either
        for sid in ("0a0a", "0c0c", "0b0b"):
            qsd.qmp(
                "blockdev-add", driver="null-co", **{"node-name": f"hypersdk-{dead}x{sid}-0-fleece"}
            )
        before = {f: snapshot(f) for f in folders}
        nodes = qsd.node_names()
        guest = qsd.guest()  # a client of this QEMU's NBD server, connected now
        assert answers(other.nbd_path, other.export_name)

        p = open_qemu_provider(f"qemu:{qsd.qmp_path}")  # no ?nbd=: it must start one
        assert isinstance(p, QmpProvider)
        try:
            p.enable_cbt()
            with pytest.raises(ConflictError) as info:
                p.open_backup(None)
            text = str(info.value)
            assert "already runs an NBD server" in text
            assert f"qemu:{qsd.qmp_path}?nbd=" in text
        finally:
            p.close()
        with open_qemu_provider(qsd.locator) as p, p.open_backup(None) as session:
            assert session.disks[0].reader.pread(0, 4096) == bytes(4096)

        assert guest.pread(0, 4096) == bytes(4096)  # its client was not cut off
        assert answers(qsd.nbd_path, qsd.export_name)
        assert answers(other.nbd_path, other.export_name)
        assert {f: snapshot(f) for f in folders} == before
        assert qsd.node_names() == nodes
    live_maker.kill()
    live_maker.wait()


CRASHING_SESSION = """
import sys, time
from hypersdk.providers.qemu import open_qemu_provider
p = open_qemu_provider(sys.argv[1])
s = p.open_backup(None)
print(s.session_id, s.tmpdir, flush=True)
time.sleep(60)
"""


def crash_a_session(qsd: QemuStorageDaemon, session_tmp: Path) -> tuple[str, str]:
    """Start a session in a child process and SIGKILL it mid-session: (its id, its folder)."""
    env = {**os.environ, "TMPDIR": str(session_tmp)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SESSION, qsd.locator],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    sid, folder = child.stdout.readline().split()
    child.kill()
    child.wait()
    return sid, folder


def test_dead_session_of_this_qemu_is_swept(tmp_path: Path, session_tmp: Path) -> None:
    """A session killed with SIGKILL left a job, an export, a fleecing node, its folder
    and the NBD server it started: the next session removes all of it and starts its
    own NBD server."""
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB, nbd_server=False) as qsd:
        with open_qemu_provider(qsd.locator) as p:
            p.enable_cbt()
        before = state(qsd)
        sid, folder = crash_a_session(qsd, session_tmp)
        assert named(qsd, sid)  # export, job, fleecing node
        assert answers(Path(folder) / "nbd.sock", f"hypersdk-{sid}-0-export")

        with open_qemu_provider(qsd.locator) as p, p.open_backup(None) as session:
            assert not named(qsd, sid)
            assert not Path(folder).exists()
            assert session.disks[0].reader.pread(0, 512) == bytes(512)
        assert state(qsd) == before


def test_failed_session_of_this_process_is_swept(qsd: QemuStorageDaemon, session_tmp: Path) -> None:
    """A daemon runs many sessions in one process: one whose teardown could not reach
    QEMU keeps its marked folder, and the next session of the same process sweeps it."""
    before = state(qsd)
    p1 = open_qemu_provider(qsd.locator)
    assert isinstance(p1, QmpProvider)
    p1.enable_cbt()
    first = p1.open_backup(None)
    sid, folder = first.session_id, Path(first.tmpdir)
    assert named(qsd, sid)
    qemu = _stale.qemu_id(p1._qmp)
    assert sid not in _stale.find(qemu).ours  # running: not a leftover
    p1.close()  # the QMP connection is gone before the session ends
    with pytest.raises(ProviderError, match="cleanup failed"):
        first.close()
    assert folder.is_dir() and named(qsd, sid)  # kept: the proof for the next session
    assert _stale.find(qemu).ours == {sid: folder}

    with open_qemu_provider(qsd.locator) as p2, p2.open_backup(None) as second:
        assert second.session_id != sid
        assert not named(qsd, sid)
        assert not folder.exists()
    assert state(qsd) == before
    assert not list(session_tmp.iterdir())


def test_orphan_folders_of_a_gone_qemu(tmp_path: Path, session_tmp: Path) -> None:
    """A folder of a dead maker whose QEMU no longer runs holds nothing of anyone: it
    goes. One of a QEMU that runs but is not this one stays."""
    dead = dead_pid()
    with QemuStorageDaemon(tmp_path / "gone", size=16 * MiB) as gone:
        gone_qemu = qemu_of(gone)
    with (
        QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as qsd,
        QemuStorageDaemon(tmp_path / "other", size=16 * MiB) as other,
    ):
        orphan = leftover(session_tmp, f"{dead}x0e0e", gone_qemu, dead)
        offline = leftover(session_tmp, f"{dead}x0e0f", None, dead, kind="qcow2")
        kept = leftover(session_tmp, f"{dead}x0f0f", qemu_of(other), dead)
        unknown = leftover(session_tmp, f"{dead}x0f0e", None, dead)  # QEMU not known
        with open_qemu_provider(qsd.locator) as p, p.open_backup(None):
            pass
        assert not orphan.exists() and not offline.exists()
        assert kept.exists() and unknown.exists()


def test_dead_sessions_nbd_server_serving_others_is_kept(tmp_path: Path, session_tmp: Path) -> None:
    """The NBD server a dead session started, to which someone added an export of
    their own since: it stays up, and the error names its socket for ?nbd=."""
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB, nbd_server=False) as qsd:
        sid, folder = crash_a_session(qsd, session_tmp)
        sock = Path(folder) / "nbd.sock"
        qsd.qmp(
            "block-export-add", type="nbd", id="someone", name="someone", **{"node-name": "disk0"}
        )

        with open_qemu_provider(qsd.locator) as p, pytest.raises(ConflictError) as info:
            p.open_backup(None)
        assert f"qemu:{qsd.qmp_path}?nbd={sock}" in str(info.value)
        assert not named(qsd, sid)  # the dead session's own objects went
        assert answers(sock, "someone")
        with open_qemu_provider(f"{qsd.locator}?nbd={sock}") as p, p.open_backup(None) as s:
            assert s.disks[0].reader.pread(0, 512) == bytes(512)
        assert answers(sock, "someone")


@pytest.mark.parametrize(
    "spoil",
    [
        "not json",
        "wrong shape",
        "other session",
        "marker is a symlink",
        "folder is a symlink",
        "group-writable marker of another owner",
    ],
)
def test_a_marker_that_proves_nothing_is_not_read(session_tmp: Path, spoil: str) -> None:
    """Only a well-formed marker of ours, in a real folder of ours, naming the folder's
    own session, counts as proof."""
    dead = dead_pid()
    qemu = {"pid": 1, "start": 1, "uid": 0, "qmp_path": "/q", "qmp_dev": 1, "qmp_ino": 1}
    folder = leftover(session_tmp, f"{dead}x1a1a", qemu, dead)
    assert _stale.read_marker(folder) is not None
    marker = folder / "session.json"
    doc = json.loads(marker.read_text())
    if spoil == "not json":
        marker.write_text("{")
    elif spoil == "wrong shape":
        marker.write_text(json.dumps({**doc, "maker": [1, 2]}))
    elif spoil == "other session":
        marker.write_text(json.dumps({**doc, "session": f"{dead}x2b2b"}))
    elif spoil == "marker is a symlink":
        real = session_tmp / "elsewhere.json"
        marker.rename(real)
        marker.symlink_to(real)
    elif spoil == "folder is a symlink":
        moved = folder.rename(session_tmp / "real-folder")
        folder.symlink_to(moved)
    else:
        os.chown(marker, pwd.getpwnam("nobody").pw_uid, -1)
        marker.chmod(0o666)
    assert _stale.read_marker(folder) is None
    assert not _stale.find(None).orphans  # and it is no orphan either
