"""An export to S3 killed with SIGKILL in the middle of its uploads: earlier generations
stay intact, verify is clean, and once the dead writer's lease expired gc removes what
it uploaded and the next export takes its lock over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypersdk.errors import LockedError
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes
from tests.rigs.s3 import s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures

WRITER = """
import sys
from pathlib import Path
from hypersdk.repository.repository import Repository
from tests.chain import export
repo = Repository.open(sys.argv[1])
parent = repo.generations("vm1")[-1]
print("started", flush=True)
export(repo, {"disk-0": Path(sys.argv[2])}, parent=parent, parallel=2)
print("finished", flush=True)
"""

LEASE_S = "2"


def test_sigkill_in_the_middle_of_an_upload(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSDK_LOCK_LEASE_S", LEASE_S)
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(100 * BS))
    first = export(repo, {"disk-0": img})
    expected = {first.manifest.id: img.read_bytes()}
    before = len(list(repo.chunks.ids()))
    img.write_bytes(os.urandom(100 * BS))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, s3_url, str(img)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while len(list(repo.chunks.ids())) < before + 10:
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.05)
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            export(repo, {"disk-0": img}, parent=first.manifest)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed = time.monotonic()
    assert proc.returncode == -signal.SIGKILL
    # The dead writer's leases block gc until they expire.
    with pytest.raises(LockedError, match=f"pid {proc.pid}"):
        collect_garbage(repo)
    uploaded = len(list(repo.chunks.ids())) - before
    assert 10 <= uploaded < 100, "killed in the middle of the uploads"

    assert [m.id for m in repo.generations("vm1")] == [first.manifest.id]
    assert restored_bytes(repo, first.manifest, "disk-0", tmp_path) == expected[first.manifest.id]
    assert verify(repo, select(repo, None, None)).ok
    # Once they expired, gc removes what it uploaded.
    time.sleep(max(0.0, killed + float(LEASE_S) + 0.5 - time.monotonic()))
    report = collect_garbage(repo)
    assert report.chunks_removed == uploaded and report.chunks_kept == before
    nxt = export(repo, {"disk-0": img}, parent=first.manifest)  # its VM lock is taken over
    expected[nxt.manifest.id] = img.read_bytes()
    for m in repo.generations("vm1"):
        assert restored_bytes(repo, m, "disk-0", tmp_path) == expected[m.id]
    assert verify(repo, select(repo, None, None)).ok
