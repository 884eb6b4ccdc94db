"""The QEMU provider against a real qemu-system-x86_64 (KVM if usable, else TCG)."""

from __future__ import annotations

from pathlib import Path

from hypersdk.providers.qemu import QmpProvider, open_qemu_provider
from tests.qemu.helpers import image_bytes, materialize, ranges
from tests.rigs.qsd import MiB, QemuVm

K64 = 64 * 1024


def test_vm_full_then_incremental(tmp_path: Path) -> None:
    with QemuVm(tmp_path / "vm", size=8 * MiB) as vm:
        vm.io("write -P 0x31 0 1M")
        p = open_qemu_provider(vm.locator)  # no ?nbd=: the provider starts its own server
        assert isinstance(p, QmpProvider)
        try:
            status = p.cbt_status()
            assert [d.key for d in status.disks] == ["vda"]
            assert status.disks[0].capacity_bytes == 8 * MiB
            p.enable_cbt()
            with p.open_backup(None) as session:
                (disk,) = session.disks
                full = materialize(disk)
                first = disk.change_id
            p.backup_committed({"vda": first})
            vm.io("flush")
            assert full == image_bytes(vm.disk_path, tmp_path)

            vm.io("write -P 0x32 3M 64k")
            vm.io("flush")
            expected = image_bytes(vm.disk_path, tmp_path)
            before = (vm.node_names(), vm.export_ids(), vm.job_ids())
            with p.open_backup({"vda": first}) as session:
                (disk,) = session.disks
                assert disk.changed is not None
                assert ranges(disk.changed, zero=False) == [(3 * MiB, 3 * MiB + K64)]
                vm.io("write -P 0x33 3M 64k")  # after the point in time: not seen
                assert materialize(disk, full) == expected
            assert (vm.node_names(), vm.export_ids(), vm.job_ids()) == before
            # the NBD server we started is gone: a second session can start its own
            with p.open_backup(None):
                pass
        finally:
            p.close()
