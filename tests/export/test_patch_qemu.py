"""Sub-block incrementals (engine.patch) against a real qemu-storage-daemon: QEMU's
readers do not patch by default (a local NBD read costs about what a patch costs), so
the test turns it on for the NBD pool and checks that every generation restores byte
for byte, the last, short block included, and that only the changed bytes are read."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.engine.export import ExportRequest, run_export
from hypersdk.nbd.pool import NbdPool
from hypersdk.providers.factory import open_provider
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from hypersdk.state.history import History
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon

KiB = 1024
BS = 256 * KiB
SIZE = 16 * MiB + 70 * KiB  # not a multiple of the block size: a short last block


@pytest.fixture
def odd_qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=SIZE) as daemon:
        yield daemon


def test_sub_block_incrementals_restore_exactly(
    cli: Cli, odd_qsd: QemuStorageDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    qsd = odd_qsd
    rng = random.Random(11)
    qsd.write(0, rng.randbytes(SIZE))
    provider = open_provider(qsd.locator)
    provider.enable_cbt()
    monkeypatch.setattr(NbdPool, "patch_threshold", 0.75, raising=False)
    monkeypatch.setattr(NbdPool, "request_bytes", 4096, raising=False)
    reads: list[int] = []
    real = NbdPool.pread

    def counting(self: NbdPool, offset: int, length: int) -> bytes:
        reads.append(length)
        return real(self, offset, length)

    monkeypatch.setattr(NbdPool, "pread", counting)
    history = History(cli.tmp / "state")
    expected: dict[str, bytes] = {}
    try:

        def export(incremental: bool) -> dict[str, int | str]:
            qsd.flush()
            reads.clear()
            request = ExportRequest(
                output=str(cli.repo), incremental=incremental, parallel=3, block_size=BS
            )
            report = run_export(provider, request, history)
            expected[report.generation] = qsd.read(0, SIZE)
            return {"mode": report.mode, "read": report.bytes_read, "vm": report.vm}

        full = export(False)
        assert full["mode"] == "full"
        for _ in range(2):
            for _w in range(6):  # scattered 4-32 KiB writes
                qsd.write(
                    rng.randrange(0, SIZE - 40 * KiB), rng.randbytes(rng.randrange(4, 33) * KiB)
                )
            qsd.write(SIZE - 512, rng.randbytes(512))  # the very end of the disk
            qsd.zero(3 * BS + 64 * KiB, 64 * KiB)  # zeroed in part: no read
            inc = export(True)
            assert inc["mode"] == "incremental"
            # the dirty bitmap's 64 KiB granules, never a whole 256 KiB block each
            assert max(reads) <= 128 * KiB and sum(reads) == inc["read"]
            assert int(inc["read"]) <= 8 * 128 * KiB
    finally:
        provider.close()
    repo = Repository.open(cli.repo)
    for gen, data in expected.items():
        out = cli.tmp / "restored.raw"
        restore_disk(repo, repo.generation(str(full["vm"]), gen), "disk0", out, force=True)
        assert out.read_bytes() == data
