"""An interrupted export (exception or SIGKILL) must leave every earlier generation intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypersdk.engine.writer import GenerationWriter
from hypersdk.errors import LockedError
from hypersdk.providers.base import FrozenDisk
from hypersdk.providers.raw import RawImageReader
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes, vm


class FailingReader(RawImageReader):
    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at

    def pread(self, offset: int, length: int) -> bytes:
        if offset >= self.fail_at:
            raise OSError(5, "Input/output error (injected)")
        return super().pread(offset, length)


def _assert_intact(repo: Repository, expected: dict[str, bytes], tmp: Path) -> None:
    gens = repo.generations("vm1")
    assert [g.id for g in gens] == list(expected)
    for g in gens:
        assert restored_bytes(repo, g, "disk-0", tmp) == expected[g.id]
    assert verify(repo, select(repo, None, None)).ok


def test_exception_mid_generation_commits_nothing(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(40 * BS))
    first = export(repo, {"disk-0": img})
    expected = {first.manifest.id: img.read_bytes()}
    img.write_bytes(os.urandom(40 * BS))
    reader = FailingReader(img, fail_at=30 * BS)
    disk = FrozenDisk("disk-0", 40 * BS, "c2", None, reader)
    with pytest.raises(OSError, match="injected"), GenerationWriter(repo, vm()) as w:
        w.write([disk], parent=first.manifest, reason="t", parallel=4)
    reader.close()
    _assert_intact(repo, expected, tmp_path)
    gc = collect_garbage(repo)
    # the failed run's chunks were never named (their batch was not full) and their
    # temp files went with the error: nothing is left for gc
    assert (gc.chunks_removed, gc.temp_files_removed, gc.chunks_kept) == (0, 0, 40)
    nxt = export(repo, {"disk-0": img}, parent=first.manifest)
    expected[nxt.manifest.id] = img.read_bytes()
    _assert_intact(repo, expected, tmp_path)


WRITER = """
import sys, time
from pathlib import Path
from hypersdk.providers.raw import RawImageReader
from hypersdk.repository.repository import Repository
from tests.chain import export

class Slow(RawImageReader):
    def pread(self, offset, length):
        time.sleep(0.02)
        return super().pread(offset, length)

import tests.chain as chain
chain.RawImageReader = Slow
repo = Repository.open(sys.argv[1])
parent = repo.generations("vm1")[-1]
print("started", flush=True)
export(repo, {"disk-0": Path(sys.argv[2])}, parent=parent, parallel=2)
print("finished", flush=True)
"""


def test_sigkill_mid_generation(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(200 * BS))
    first = export(repo, {"disk-0": img})
    expected = {first.manifest.id: img.read_bytes()}
    img.write_bytes(os.urandom(200 * BS))
    chunks_before = len(list(repo.chunks.all()))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(repo.root), str(img)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        # new chunks are temp files until their batch is durable, then named
        while len(list(repo.chunks.all())) + len(list(repo.chunks.leftovers())) < (
            chunks_before + 20
        ):
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.05)
        # while it runs, a second writer is refused with the holder's pid
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            export(repo, {"disk-0": img}, parent=first.manifest)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    _assert_intact(repo, expected, tmp_path)
    # the dead writer's lock is taken over; its leftovers go with gc
    nxt = export(repo, {"disk-0": img}, parent=first.manifest)
    expected[nxt.manifest.id] = img.read_bytes()
    collect_garbage(repo)
    _assert_intact(repo, expected, tmp_path)


def test_gc_refuses_while_a_writer_runs(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    running = "an export, restore or verify is running"
    with repo.writer("vm1"), pytest.raises(LockedError, match=running):
        collect_garbage(repo)
    collect_garbage(repo)  # free again


def test_gc_removes_temp_files_of_interrupted_writes(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(4 * BS))
    export(repo, {"disk-0": img})
    _, path = next(repo.chunks.all())
    leftover = path.with_name(path.name + ".0123456789ab.tmp")
    leftover.write_bytes(b"half a chunk")
    (repo.layout.tmp / "index.tmp").write_bytes(b"half an index")
    assert verify(repo, select(repo, None, None)).ok  # not a chunk: never read
    report = collect_garbage(repo)
    assert report.temp_files_removed == 2 and report.chunks_removed == 0
    assert not leftover.exists() and path.exists()
