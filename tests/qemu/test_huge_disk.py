"""A 62 TiB disk (vSphere's limit) as a sparse qcow2 on a real qemu-storage-daemon: the
backup session's block status covers it in 32-bit requests, several in flight, full and
incremental, in about a second each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.nbd import NbdClient
from hypersdk.nbd import protocol as p
from hypersdk.providers.qemu import QmpProvider, open_qemu_provider
from tests.qemu.helpers import assert_contiguous, ranges
from tests.rigs.qsd import MiB, QemuStorageDaemon

TiB = 1 << 40
SIZE = 62 * TiB
# Data on both sides of 4 GiB request boundaries and in the last megabyte.
FIRST = 5 * (1 << 30) - MiB
LAST = SIZE - MiB


@pytest.fixture
def huge(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=SIZE) as daemon:
        daemon.write(FIRST, b"\x11" * (2 * MiB))
        daemon.write(LAST, b"\x22" * MiB)
        daemon.flush()
        yield daemon


@pytest.fixture
def status_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every NBD block status request sent."""
    sent: list[int] = []
    submit = NbdClient._submit

    def counting(self: NbdClient, request: object, *args: object, **kwargs: object) -> object:
        if getattr(request, "command", None) == p.CMD_BLOCK_STATUS:
            sent.append(getattr(request, "length", 0))
        return submit(self, request, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(NbdClient, "_submit", counting)
    return sent


def test_full_and_incremental_of_a_62_tib_disk(
    huge: QemuStorageDaemon, status_requests: list[int]
) -> None:
    provider = open_qemu_provider(huge.locator)
    assert isinstance(provider, QmpProvider)
    try:
        provider.enable_cbt()
        with provider.open_backup(None) as session:
            (disk,) = session.disks
            assert disk.capacity_bytes == SIZE and disk.changed is not None
            assert_contiguous(disk.changed, SIZE)
            assert ranges(disk.changed, zero=False) == [(FIRST, FIRST + 2 * MiB), (LAST, SIZE)]
            assert disk.reader.pread(LAST, 4) == b"\x22" * 4
            first = disk.change_id
        provider.backup_committed({"disk0": first})
        # 62 TiB in requests of almost 4 GiB: about 15,900 (in 1 GiB ones: 63,488)
        assert len(status_requests) < SIZE // (4 << 30) + 100
        assert all(n < 1 << 32 for n in status_requests)

        huge.write(LAST + 4096, b"\x33" * 10)  # dirties one 64 KiB granule at the very end
        huge.zero(FIRST, MiB)  # dirty, and reads as zeros
        huge.flush()
        with provider.open_backup({"disk0": first}) as session:
            (disk,) = session.disks
            assert disk.changed is not None
            assert ranges(disk.changed, zero=False) == [(LAST, LAST + 65536)]
            assert ranges(disk.changed, zero=True) == [(FIRST, FIRST + MiB)]
            assert disk.reader.pread(LAST + 4096, 10) == b"\x33" * 10
    finally:
        provider.close()
