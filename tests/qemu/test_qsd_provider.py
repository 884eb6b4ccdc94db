"""The QEMU provider against a real qemu-storage-daemon."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.errors import ChangeIdInvalid, ConnectionFailed, HyperSDKError, ProviderError
from hypersdk.nbd import NbdPool
from hypersdk.providers.base import Provider
from hypersdk.providers.qemu import QmpProvider, open_qemu_provider
from tests.qemu.helpers import assert_contiguous, image_bytes, materialize, ranges
from tests.rigs.qsd import MiB, QemuStorageDaemon

K64 = 64 * 1024


@pytest.fixture
def provider(qsd: QemuStorageDaemon) -> Iterator[QmpProvider]:
    p = open_qemu_provider(qsd.locator)
    assert isinstance(p, QmpProvider)
    yield p
    p.close()


def _state(qsd: QemuStorageDaemon) -> tuple[set[str], set[str], set[str], set[str]]:
    return qsd.node_names(), qsd.export_ids(), qsd.job_ids(), set(qsd.bitmaps(qsd.node_name))


def _full_and_commit(p: QmpProvider) -> str:
    with p.open_backup(None) as session:
        change_id: str = session.disks[0].change_id
    p.backup_committed({"disk0": change_id})
    return change_id


def test_is_a_provider(provider: QmpProvider) -> None:
    p: Provider = provider
    assert p.identity().platform == "qemu"
    assert p.identity().vm_id == provider.identity().vm_id  # stable


def test_enable_disable_status(qsd: QemuStorageDaemon, provider: QmpProvider) -> None:
    status = provider.cbt_status()
    assert not status.enabled and status.reason
    assert [d.key for d in status.disks] == ["disk0"]
    assert status.disks[0].capacity_bytes == 16 * MiB and status.disks[0].change_id == ""

    qsd.qmp("block-dirty-bitmap-add", node="disk0", name="someone-else", persistent=True)
    provider.enable_cbt()
    status = provider.cbt_status()
    assert status.enabled
    change_id = status.disks[0].change_id
    assert change_id.startswith("hypersdk-")
    info = qsd.bitmaps("disk0")[change_id]
    assert info["persistent"] and info["recording"]

    provider.enable_cbt()  # already on: keeps the checkpoint
    assert provider.cbt_status().disks[0].change_id == change_id
    assert provider.check_change_id("disk0", change_id).valid
    assert not provider.check_change_id("nope", change_id).valid

    provider.disable_cbt()
    assert not provider.cbt_status().enabled
    assert set(qsd.bitmaps("disk0")) == {"someone-else"}  # only ours removed


def test_full_session_equals_disk(
    qsd: QemuStorageDaemon, provider: QmpProvider, tmp_path: Path
) -> None:
    qsd.write(0, bytes(range(256)) * 4096)  # 1 MiB
    qsd.write(5 * MiB + 512, b"\xab" * 3000)
    qsd.write(15 * MiB, b"\xcd" * MiB)
    qsd.flush()
    expected = image_bytes(qsd.disk_path, tmp_path)
    provider.enable_cbt()
    with provider.open_backup(None) as session:
        (disk,) = session.disks
        assert disk.key == "disk0" and disk.capacity_bytes == 16 * MiB
        assert disk.change_id.startswith("hypersdk-")
        assert disk.change_id in qsd.bitmaps("disk0")
        assert disk.changed is not None
        assert_contiguous(disk.changed, disk.capacity_bytes)
        assert any(e.zero for e in disk.changed)  # unallocated areas are marked zero
        data_bytes = sum(e.length for e in disk.changed if not e.zero)
        assert data_bytes <= 3 * MiB
        assert materialize(disk) == expected
        # the reader reads every byte, also where the extents say zero
        assert disk.reader.pread(14 * MiB, MiB) == expected[14 * MiB : 15 * MiB]


def test_session_reads_over_several_connections(
    qsd: QemuStorageDaemon, provider: QmpProvider, tmp_path: Path
) -> None:
    """The fleecing export is read-only, so QEMU allows multi-conn: the engine's threads
    each get a connection of their own, and together they read exactly the disk."""
    qsd.write(0, bytes(range(256)) * 4096 * 3)  # 3 MiB
    qsd.write(9 * MiB + 7, b"\x5a" * 70000)
    qsd.flush()
    expected = image_bytes(qsd.disk_path, tmp_path)
    provider.enable_cbt()
    with provider.open_backup(None) as session:
        (disk,) = session.disks
        reader = disk.reader
        assert isinstance(reader, NbdPool)
        assert reader.primary.can_multi_conn and reader.connections == 4
        got: dict[int, bytes] = {}

        def read(first: int) -> None:
            for block in range(first, 16, 4):
                got[block] = reader.pread(block * MiB, MiB)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert b"".join(got[b] for b in range(16)) == expected
    assert not qsd.export_ids() - {qsd.export_name}  # every connection's export is gone


def test_incremental_reports_exactly_the_changes(
    qsd: QemuStorageDaemon, provider: QmpProvider, tmp_path: Path
) -> None:
    qsd.write(0, b"\x11" * (4 * MiB))
    qsd.flush()
    provider.enable_cbt()
    first = _full_and_commit(provider)
    parent = image_bytes(qsd.disk_path, tmp_path)

    qsd.write(K64 * 20, b"\x22" * K64)  # exactly one granule
    qsd.write(K64 * 40 + 100, b"\x33" * 10)  # a few bytes: the whole granule is dirty
    qsd.write(8 * MiB - 10, b"\x44" * 20)  # straddles two granules
    qsd.zero(MiB, 2 * K64)  # zeroed: dirty and reads as zeros
    qsd.trim(2 * MiB, 4 * K64)  # trimmed: dirty and reads as zeros
    qsd.flush()
    expected = image_bytes(qsd.disk_path, tmp_path)

    estimate = provider.estimate_changes({"disk0": first})
    assert estimate.exact and estimate.per_disk == {"disk0": 10 * K64}

    with provider.open_backup({"disk0": first}) as session:
        (disk,) = session.disks
        assert disk.changed is not None
        assert ranges(disk.changed, zero=False) == [
            (K64 * 20, K64 * 21),
            (K64 * 40, K64 * 41),
            (8 * MiB - K64, 8 * MiB + K64),
        ]
        assert ranges(disk.changed, zero=True) == [
            (MiB, MiB + 2 * K64),
            (2 * MiB, 2 * MiB + 4 * K64),
        ]
        assert materialize(disk, parent) == expected
        second = disk.change_id
    # not committed yet: both checkpoints exist
    assert {first, second} <= set(qsd.bitmaps("disk0"))
    provider.backup_committed({"disk0": second})
    assert set(qsd.bitmaps("disk0")) == {second}
    assert not provider.check_change_id("disk0", first).valid


def test_session_is_a_point_in_time(
    qsd: QemuStorageDaemon, provider: QmpProvider, tmp_path: Path
) -> None:
    size = 16 * MiB
    for off in range(0, size, MiB):
        qsd.write(off, bytes([off // MiB + 1]) * MiB)
    qsd.flush()
    provider.enable_cbt()
    first = _full_and_commit(provider)
    qsd.write(3 * MiB, b"\x77" * MiB)  # changed before the session: must be exported
    qsd.flush()
    at_start = image_bytes(qsd.disk_path, tmp_path)
    parent_without_change = bytearray(at_start)
    parent_without_change[3 * MiB : 4 * MiB] = bytes([4]) * MiB

    stop = threading.Event()
    written: list[int] = []

    def guest_writer() -> None:
        i = 0
        while not stop.is_set():
            off = (i * 7 % 256) * K64
            qsd.write(off, b"\xee" * K64)
            written.append(off)
            i += 1

    with provider.open_backup({"disk0": first}) as session:
        writer = threading.Thread(target=guest_writer)
        writer.start()
        try:
            while len(written) < 64:  # the guest overwrote much of the disk meanwhile
                threading.Event().wait(0.01)
            (disk,) = session.disks
            got = materialize(disk, bytes(parent_without_change))
            full = disk.reader.pread(0, size)
        finally:
            stop.set()
            writer.join()
    assert len(written) >= 64
    assert image_bytes(qsd.disk_path, tmp_path) != at_start  # the guest did write
    assert got == at_start
    assert full == at_start


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_teardown_after_error_leaves_nothing(
    qsd: QemuStorageDaemon, provider: QmpProvider, error: type[BaseException]
) -> None:
    provider.enable_cbt()
    first = _full_and_commit(provider)
    before = _state(qsd)
    with pytest.raises(error), provider.open_backup({"disk0": first}) as session:
        assert qsd.job_ids() and len(qsd.export_ids()) == 2
        tmpdir = Path(session.tmpdir)
        assert tmpdir.is_dir()
        raise error()
    assert _state(qsd) == before  # nodes, exports, jobs, bitmaps (new checkpoint gone)
    assert not tmpdir.exists()
    assert provider.check_change_id("disk0", first).valid  # the old one stays valid


def test_teardown_after_success_keeps_new_checkpoint(
    qsd: QemuStorageDaemon, provider: QmpProvider
) -> None:
    provider.enable_cbt()
    nodes, exports, jobs = qsd.node_names(), qsd.export_ids(), qsd.job_ids()
    with provider.open_backup(None) as session:
        new = session.disks[0].change_id
    assert (qsd.node_names(), qsd.export_ids(), qsd.job_ids()) == (nodes, exports, jobs)
    assert provider.check_change_id("disk0", new).valid


def test_change_id_deleted_behind_our_back(qsd: QemuStorageDaemon, provider: QmpProvider) -> None:
    provider.enable_cbt()
    first = _full_and_commit(provider)
    assert provider.check_change_id("disk0", first).valid
    qsd.qmp("block-dirty-bitmap-remove", node="disk0", name=first)
    check = provider.check_change_id("disk0", first)
    assert not check.valid and "does not exist" in check.reason
    before = _state(qsd)
    with pytest.raises(ChangeIdInvalid):
        provider.open_backup({"disk0": first})
    with pytest.raises(ChangeIdInvalid):
        provider.estimate_changes({"disk0": first})
    assert _state(qsd) == before


def test_disabled_bitmap_is_not_a_valid_change_id(
    qsd: QemuStorageDaemon, provider: QmpProvider
) -> None:
    provider.enable_cbt()
    first = _full_and_commit(provider)
    qsd.qmp("block-dirty-bitmap-disable", node="disk0", name=first)
    assert not provider.check_change_id("disk0", first).valid
    assert not provider.cbt_status().enabled


def test_daemon_gone_is_a_provider_error(qsd: QemuStorageDaemon, provider: QmpProvider) -> None:
    qsd.stop()
    with pytest.raises(ProviderError) as info:
        provider.cbt_status()
    assert isinstance(info.value, HyperSDKError)
    assert info.value.__cause__ is not None  # chained, not swallowed


def test_nbd_socket_is_not_qmp(qsd: QemuStorageDaemon) -> None:
    with pytest.raises(ConnectionFailed):
        open_qemu_provider(f"qemu:{qsd.nbd_path}")
