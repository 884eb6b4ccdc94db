"""The plain QEMU provider with a QEMU of another user (as libvirt runs it): the
session's folder for the fleecing file and NBD socket belongs to QEMU's user (from
SO_PEERCRED) and nobody else, and a leftover folder of another user never makes the
next export fail."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from hypersdk.providers.qemu import QmpProvider, _stale, open_qemu_provider
from tests.libvirt.rig import QEMU_USER
from tests.qemu.helpers import image_bytes, materialize
from tests.rigs.qsd import MiB, QemuStorageDaemon


class ForeignQsd(QemuStorageDaemon):
    """qemu-storage-daemon running as QEMU_USER, without an NBD server of its own."""

    def _argv(self) -> list[str]:
        user = pwd.getpwnam(QEMU_USER)
        return [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--", *super()._argv(),
        ]  # fmt: skip


@pytest.fixture
def qemu_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to run QEMU as another user")
    try:
        return pwd.getpwnam(QEMU_USER)
    except KeyError:
        pytest.skip(f"user {QEMU_USER} does not exist (make setup creates it)")


def test_qemu_of_another_user_gets_its_own_folder(
    qemu_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    work = Path(tempfile.mkdtemp(prefix="hypersdk-mixed-"))
    try:
        os.chmod(work, 0o755)
        vm_dir = work / "vm"
        vm_dir.mkdir()
        qsd = ForeignQsd(vm_dir, size=4 * MiB, nbd_server=False)
        create = ["qemu-img", "create", "-q", "-f", "qcow2", str(qsd.disk_path), str(4 * MiB)]
        subprocess.run(create, check=True)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(qsd.disk_path)],
            check=True,
            capture_output=True,
        )
        os.chown(vm_dir, qemu_user.pw_uid, qemu_user.pw_gid)
        os.chown(qsd.disk_path, qemu_user.pw_uid, qemu_user.pw_gid)
        # A leftover folder of another user: unreadable to its neighbours.
        foreign = Path(tempfile.mkdtemp(prefix="hypersdk-qemu-1-abcd-"))
        (foreign / "nbd.sock").touch()
        os.chown(foreign, qemu_user.pw_uid, qemu_user.pw_gid)
        os.chmod(foreign, 0o700)
        with qsd:
            p = open_qemu_provider(qsd.locator)
            assert isinstance(p, QmpProvider)
            try:
                p.enable_cbt()
                with p.open_backup(None) as session:
                    inner = Path(session.tmpdir) / _stale.QEMU_DIR
                    st = os.stat(inner)
                    assert st.st_uid == qemu_user.pw_uid
                    assert stat.S_IMODE(st.st_mode) == 0o700
                    assert stat.S_IMODE(os.stat(session.tmpdir).st_mode) == 0o711
                    assert {f.name for f in inner.iterdir()} >= {"nbd.sock"}
                    (disk,) = session.disks
                    data = materialize(disk)
                assert not Path(session.tmpdir).exists()
            finally:
                p.close()
        assert data == image_bytes(qsd.disk_path, tmp_path)
        assert foreign.exists()  # not ours: left alone, and no error
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
        if "foreign" in locals():
            subprocess.run(["rm", "-rf", str(foreign)], check=False)
