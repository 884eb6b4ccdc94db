"""Readers hold the repository lock shared: gc cannot delete under a restore or verify.
A restore publishes its image without replacing a file that appeared meanwhile."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hypersdk.access.image import restore_image
from hypersdk.errors import ConflictError, ExportCancelled, LockedError
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export
from tests.repository.test_damage import hyperctl


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(24 * BS))
    export(repo, {"disk-0": img})
    return repo


def test_gc_started_during_a_restore_refuses_and_the_restore_is_whole(
    repo: Repository, tmp_path: Path
) -> None:
    m = repo.generations("vm1")[0]
    expected = (tmp_path / "disk.raw").read_bytes()
    gc_runs: list[tuple[int, str]] = []

    def meanwhile(_: int) -> None:
        if gc_runs:
            return
        # Someone deletes the very generation being restored and runs gc: without the
        # shared lock gc would remove every chunk the restore has still to read.
        repo.delete_generation("vm1", m.id)
        proc = hyperctl("gc", "--output", str(repo.root))
        gc_runs.append((proc.returncode, proc.stderr))

    out = tmp_path / "out.raw"
    restore_disk(repo, m, "disk-0", out, parallel=1, progress=meanwhile)
    assert out.read_bytes() == expected
    code, err = gc_runs[0]
    assert code == 1
    assert "an export, restore or verify is running" in err and "Traceback" not in err
    # once the restore is done, gc runs and removes the deleted generation's chunks
    assert collect_garbage(repo).chunks_removed == 24


def test_gc_started_during_verify_refuses(repo: Repository) -> None:
    refused: list[str] = []

    def meanwhile(_: int) -> None:
        if not refused:
            with pytest.raises(LockedError) as exc:
                collect_garbage(repo)
            refused.append(str(exc.value))

    assert verify(repo, select(repo, None, None), parallel=1, progress=meanwhile).ok
    assert refused and "restore or verify is running" in refused[0]


def test_a_restore_waits_for_no_one_while_gc_runs(repo: Repository, tmp_path: Path) -> None:
    m = repo.generations("vm1")[0]
    with repo.exclusive(), pytest.raises(LockedError, match="gc is running"):
        restore_disk(repo, m, "disk-0", tmp_path / "out.raw")
    assert not (tmp_path / "out.raw").exists()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_file_that_appears_during_a_restore_is_not_replaced(
    repo: Repository, tmp_path: Path, fmt: str
) -> None:
    m = repo.generations("vm1")[0]
    dest_dir = tmp_path / "restores"
    dest_dir.mkdir()
    out = dest_dir / "out.img"
    seen: list[int] = []

    def someone_writes_the_target(_: int) -> None:
        if not seen:
            # the temp folder is private and beside the target (same file system)
            (work,) = [dest_dir / n for n in _leftovers(dest_dir)]
            seen.append(stat.S_IMODE(work.stat().st_mode))
            out.write_bytes(b"not yours")

    with pytest.raises(ConflictError, match="appeared during the restore"):
        restore_image(repo, m, "disk-0", out, fmt=fmt, progress=someone_writes_the_target)
    assert out.read_bytes() == b"not yours"
    assert seen == [0o700]
    assert _leftovers(dest_dir) == []

    # with force the file is replaced, atomically, and no temp folder is left either
    result = restore_image(repo, m, "disk-0", out, fmt=fmt, force=True)
    assert result.path == str(out) and out.read_bytes() != b"not yours"
    assert _leftovers(dest_dir) == []


def test_a_cancelled_restore_leaves_nothing(repo: Repository, tmp_path: Path) -> None:
    m = repo.generations("vm1")[0]
    cancel = threading.Event()

    def stop(_: int) -> None:
        cancel.set()

    with pytest.raises(ExportCancelled):
        restore_disk(repo, m, "disk-0", tmp_path / "out.raw", progress=stop, cancel=cancel)
    assert not (tmp_path / "out.raw").exists()
    assert _leftovers(tmp_path) == []


def test_a_reader_of_a_read_only_repository_locks_read_only(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore from a read-only mount still takes the shared lock (read-only) when the
    lock file exists, and goes on without one when it was never made there."""
    import errno

    import hypersdk.repository.locks as locks

    real_open = os.open

    def read_only_fs(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    m = repo.generations("vm1")[0]
    with repo.exclusive():
        monkeypatch.setattr(locks.os, "open", read_only_fs)
        with pytest.raises(LockedError, match="gc is running"), repo.reader():
            pass
        monkeypatch.undo()
    (repo.layout.repository_lock).unlink()
    monkeypatch.setattr(locks.os, "open", read_only_fs)
    with repo.reader():
        pass  # no lock file and none can be made: nobody can run gc here either
    monkeypatch.undo()
    restore_disk(repo, m, "disk-0", tmp_path / "out.raw")
