"""The libvirt provider against a real libvirtd and a real domain (KVM if usable, else
TCG): pull-mode backups with checkpoints, a shut-off domain through qemu-nbd, failures
that leave nothing behind, and leftovers of a crashed run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from hypersdk.errors import ChangeIdInvalid, UsageError
from hypersdk.providers.factory import canonical_locator, export_key, open_provider
from hypersdk.providers.libvirt import LibvirtProvider
from hypersdk.providers.libvirt import _session as lv_session
from hypersdk.providers.qemu import _stale
from tests.libvirt.rig import QEMU_USER, Domain, Libvirtd, MiB, domain, mode_of
from tests.qemu.helpers import image_bytes, materialize, ranges

K64 = 64 * 1024


def _open(locator: str) -> LibvirtProvider:
    p = open_provider(locator)
    assert isinstance(p, LibvirtProvider)
    return p


def _fresh(dom: Domain, running: bool) -> Domain:
    """The shared domain in the state a test wants, without checkpoints."""
    p = _open(dom.locator)
    try:
        p.disable_cbt()
    finally:
        p.close()
    assert dom.checkpoint_names() == []
    if running and not dom.dom.isActive():
        dom.start()
    elif not running:
        dom.stop()
    return dom


def _leftover_folders() -> list[str]:
    import tempfile

    return sorted(
        n for n in os.listdir(tempfile.gettempdir()) if n.startswith(lv_session.FOLDER_PREFIX)
    )


def test_running_full_then_incremental_while_written(shared_domain: Domain, tmp_path: Path) -> None:
    dom = _fresh(shared_domain, running=True)
    dom.io("write -P 0x31 0 1M")
    dom.io("flush")
    p = _open(dom.locator)
    try:
        assert p.identity().vm_id == dom.dom.UUIDString()
        assert p.identity().platform == "libvirt"
        assert not p.cbt_status().enabled
        p.enable_cbt()
        status = p.cbt_status()
        assert status.enabled, status.reason
        first_cp = status.disks[0].change_id
        before = _leftover_folders()
        with p.open_backup(None) as session:
            (disk,) = session.disks
            # QEMU's own folder: owned by its user, closed to everybody else
            folder = Path(session.tmpdir)
            inner = folder / lv_session.QEMU_DIR
            assert mode_of(folder) == 0o711
            assert mode_of(inner) == 0o700
            assert inner.stat().st_uid == pwd.getpwnam(QEMU_USER).pw_uid
            full = materialize(disk)
            first = disk.change_id
        assert _leftover_folders() == before
        assert not dom.job_active()
        assert full == image_bytes(dom.paths["vda"], tmp_path)
        p.backup_committed({"vda": first})
        assert dom.checkpoint_names() == [first]
        assert first != first_cp

        dom.io("write -P 0x32 3M 64k")
        dom.io("write -z 5M 64k")  # a zeroed range is a change too
        dom.io("flush")
        expected = image_bytes(dom.paths["vda"], tmp_path)
        est = p.estimate_changes({"vda": first})
        assert est.exact and est.per_disk == {"vda": 2 * K64}
        with p.open_backup({"vda": first}) as session:
            (disk,) = session.disks
            assert disk.changed is not None
            assert ranges(disk.changed, zero=False) == [(3 * MiB, 3 * MiB + K64)]
            assert ranges(disk.changed, zero=True) == [(5 * MiB, 5 * MiB + K64)]
            dom.io("write -P 0x33 3M 64k")  # after the point in time: not seen
            assert materialize(disk, full) == expected
            second = disk.change_id
        assert not dom.job_active()
        p.backup_committed({"vda": second})
        assert dom.checkpoint_names() == [second]

        # The CBT audit: a full read in ``changed``, libvirt's answer in ``reported``.
        dom.io("write -P 0x34 9M 64k")
        with p.open_backup({"vda": second}, audit=True) as session:
            (disk,) = session.disks
            assert disk.changed is not None and disk.reported is not None
            assert ranges(disk.reported, zero=False) == [(9 * MiB, 9 * MiB + K64)]
            assert disk.changed[0].offset == 0 and disk.changed[-1].end == 16 * MiB
        p.disable_cbt()
        assert dom.checkpoint_names() == []
    finally:
        p.close()


def test_checkpoint_deleted_behind_our_back(shared_domain: Domain) -> None:
    dom = _fresh(shared_domain, running=True)
    p = _open(dom.locator)
    try:
        p.enable_cbt()
        cp = p.cbt_status().disks[0].change_id
        dom.dom.checkpointLookupByName(cp).delete(0)
        verdict = p.check_change_id("vda", cp)
        assert not verdict.valid
        assert f"checkpoint {cp} does not exist" in verdict.reason
        with pytest.raises(ChangeIdInvalid):
            p.open_backup({"vda": cp})
        assert not dom.job_active()
    finally:
        p.close()


def test_shut_off_domain_through_its_images(shared_domain: Domain, tmp_path: Path) -> None:
    dom = _fresh(shared_domain, running=False)
    image = dom.paths["vda"]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 1M 1M", str(image)],
        check=True,
        capture_output=True,
    )
    p = _open(dom.locator)
    try:
        p.enable_cbt()  # offline: a bitmap in the image, and libvirt's record of it
        assert p.cbt_status().enabled
        with p.open_backup(None) as session:
            (disk,) = session.disks
            full = materialize(disk)
            first = disk.change_id
        assert full == image_bytes(image, tmp_path)
        p.backup_committed({"vda": first})
        assert dom.checkpoint_names() == [first]

        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 2M 64k", str(image)],
            check=True,
            capture_output=True,
        )
        assert p.estimate_changes({"vda": first}).per_disk == {"vda": K64}
        with p.open_backup({"vda": first}) as session:
            (disk,) = session.disks
            assert disk.changed is not None
            assert ranges(disk.changed, zero=False) == [(2 * MiB, 2 * MiB + K64)]
            second_img = materialize(disk, full)
            second = disk.change_id
        assert second_img == image_bytes(image, tmp_path)
        p.backup_committed({"vda": second})
        assert dom.checkpoint_names() == [second]

        # libvirt took the offline checkpoint as its own: the running domain's
        # next incremental starts from it.
        dom.start()
        dom.io("write -P 0x43 7M 64k")
        dom.io("flush")
        with p.open_backup({"vda": second}) as session:
            (disk,) = session.disks
            assert disk.changed is not None
            assert ranges(disk.changed, zero=False) == [(7 * MiB, 7 * MiB + K64)]
            assert materialize(disk, second_img) == image_bytes(image, tmp_path)
    finally:
        p.close()


def test_failure_midway_leaves_no_job_and_no_checkpoint(shared_domain: Domain) -> None:
    dom = _fresh(shared_domain, running=True)
    p = _open(dom.locator)
    try:
        p.enable_cbt()
        cps = dom.checkpoint_names()
        before = _leftover_folders()
        with pytest.raises(RuntimeError), p.open_backup({"vda": cps[0]}) as session:
            assert dom.job_active()
            assert len(dom.checkpoint_names()) == 2
            raise RuntimeError("the repository disk is full")
        assert session.disks[0].reader is not None
        assert not dom.job_active()
        assert dom.checkpoint_names() == cps
        assert _leftover_folders() == before

        # A crash: the session's process is gone without its teardown. The next
        # session proves the job is ours (its socket is in our marked folder),
        # aborts it and deletes its checkpoint.
        crashed = p.open_backup({"vda": cps[0]})
        _stale.LIVE.end(crashed.session_id)  # as if its process had died
        for client in crashed._clients:
            client.close()
        with p.open_backup({"vda": cps[0]}) as session:
            assert dom.checkpoint_names() == sorted([*cps, session.checkpoint])
            assert not os.path.exists(crashed.tmpdir)
        assert dom.checkpoint_names() == sorted([*cps, session.checkpoint])
    finally:
        p.close()


def test_canonical_locator_names_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # the daemon's running-export key: two spellings of one domain are one VM
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert export_key("libvirt:vm1") == export_key("libvirt:vm1?connect=qemu:///system")
    assert export_key("libvirt:vm1") != export_key("libvirt:vm1?connect=qemu+ssh://h/system")
    with pytest.raises(UsageError):
        canonical_locator("libvirt:")

    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://h/system")
    assert canonical_locator("libvirt:vm1") == "libvirt:vm1?connect=qemu+ssh://h/system"
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    assert canonical_locator(" libvirt:vm1 ") == "libvirt:vm1?connect=qemu:///system"
    assert (
        canonical_locator("libvirt:vm1?connect=qemu:///system?socket=/s")
        == "libvirt:vm1?connect=qemu:///system?socket=/s"
    )


def test_domain_redefined_on_another_disk_file(libvirtd: Libvirtd) -> None:
    with domain(libvirtd) as dom:  # its own: its definition changes
        p = _open(dom.locator)
        try:
            p.enable_cbt()
            cp = p.cbt_status().disks[0].change_id
            assert p.check_change_id("vda", cp).valid
            moved = dom.folder / "moved.qcow2"
            shutil.copy(dom.paths["vda"], moved)
            xml = dom.dom.XMLDesc(0).replace(str(dom.paths["vda"]), str(moved))
            dom.dom = dom.conn.defineXML(xml)  # the same UUID, another disk file
            verdict = p.check_change_id("vda", cp)
            assert not verdict.valid
            assert (
                verdict.reason == f"disk vda is now {moved}; checkpoint {cp} saw {dom.paths['vda']}"
            )
        finally:
            p.close()


def test_remote_connection_cannot_read_disks() -> None:
    # the NBD socket and the images are files on the VM's host: refused before any call
    p = LibvirtProvider("libvirt:vm?connect=qemu+ssh://h/system", "qemu+ssh://h/system", None, None)
    with pytest.raises(UsageError, match="is remote"):
        p.open_backup(None)
