"""Sub-block incrementals (engine.patch) on the vSphere lab, where reads are the slow
part: a block changed in a few of CBT's 64 KiB areas is its parent's chunk with only
those areas fetched by Range GETs; every generation restores byte for byte."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from hypersdk.engine.export import ExportRequest, run_export
from hypersdk.lab import VcsimLab
from hypersdk.providers.vsphere import _reader
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from hypersdk.state.history import History
from tests.vsphere.conftest import KiB, MiB, flat

WEB = "/DC0/vm/web"  # 64 MiB
BS = MiB  # sixteen of the lab's 64 KiB tracking areas


def test_sub_block_incremental_reads_the_changed_areas_and_restores(
    lab: VcsimLab, provider_for: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    lab.write(WEB, 0, rng.randbytes(8 * MiB))
    provider = provider_for(WEB)
    provider.enable_cbt()
    reads: list[tuple[int, int]] = []
    lock = threading.Lock()
    real = _reader.HttpRangeReader.pread

    def counting(self: _reader.HttpRangeReader, offset: int, length: int) -> bytes:
        with lock:
            reads.append((offset, length))
        return real(self, offset, length)

    monkeypatch.setattr(_reader.HttpRangeReader, "pread", counting)
    history = History(tmp_path / "state")
    repo_dir = tmp_path / "repo"
    expected: dict[str, bytes] = {}

    def export(incremental: bool) -> tuple[str, str, int, str]:
        reads.clear()
        request = ExportRequest(
            output=str(repo_dir), incremental=incremental, parallel=3, block_size=BS
        )
        report = run_export(provider, request, history)
        expected[report.generation] = flat(lab, WEB)
        return report.mode, report.vm, report.bytes_read, report.generation

    mode, vm, read, _ = export(False)
    assert mode == "full" and read == 8 * MiB
    # A GET costs the reader as much as 128 KiB more of a running one: a 1 MiB block
    # is patched when its changed ranges and their GETs come to at most half of it.
    assert _reader.HttpRangeReader.request_bytes == 128 * KiB
    small = [2, 5, 9, 30, 60]  # blocks changed in one 64 KiB area (a 4 KiB write)
    for b in small:
        lab.write(WEB, b * MiB + 70 * KiB, rng.randbytes(4096))
    lab.write(WEB, 3 * MiB + 4096, length=4096, zero=True)  # zeros: still a changed area
    lab.write(WEB, 20 * MiB + 64 * KiB, rng.randbytes(3 * 64 * KiB))  # one range of 3
    lab.write(WEB, 40 * MiB, rng.randbytes(7 * 64 * KiB))  # 7 areas: read whole
    for at in (0, 400, 900):  # three ranges far apart: read whole
        lab.write(WEB, 41 * MiB + at * KiB, rng.randbytes(4096))
    lab.write(WEB, 64 * MiB - 100, rng.randbytes(100))  # the very end of the disk
    mode, _, read, _ = export(True)
    assert mode == "incremental"
    areas = sorted((b * MiB + 64 * KiB, 64 * KiB) for b in small)
    areas += [(3 * MiB, 64 * KiB), (20 * MiB + 64 * KiB, 3 * 64 * KiB)]
    areas += [(40 * MiB, MiB), (41 * MiB, MiB), (64 * MiB - 64 * KiB, 64 * KiB)]
    assert sorted(reads) == sorted(areas)  # the changed areas, one GET each
    assert read == sum(n for _, n in areas)
    repo = Repository.open(repo_dir)
    for g, data in expected.items():
        out = tmp_path / "restored.raw"
        restore_disk(repo, repo.generation(vm, g), "disk-2000", out, force=True)
        assert out.read_bytes() == data, g
