"""Creating a new repository is race-free: its config is created exclusively."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hypersdk.errors import UsageError
from hypersdk.repository.files import create_exclusive
from hypersdk.repository.repository import Repository


def _race(root: Path, n: int) -> tuple[list[str], list[BaseException]]:
    """``n`` threads open_or_init the same new folder at once."""
    start = threading.Barrier(n)
    ids: list[str] = []
    errors: list[BaseException] = []

    def first_export(block_size: int) -> None:
        start.wait()
        try:
            ids.append(Repository.open_or_init(root, block_size=block_size).config.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_export, args=(65536 * (1 + i % 2),)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, errors


def test_two_first_exports_into_a_new_folder_share_one_repository(tmp_path: Path) -> None:
    for round_ in range(5):
        root = tmp_path / f"repo-{round_}"
        ids, errors = _race(root, 6)
        assert errors == []
        on_disk = Repository.open(root).config
        assert ids == [on_disk.id] * 6  # the losers opened the winner's repository
        assert list((root / "tmp").iterdir()) == []


def test_create_exclusive_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "config"
    assert create_exclusive(target, b"first", tmp_path / "tmp")
    assert not create_exclusive(target, b"second", tmp_path / "tmp")
    assert target.read_bytes() == b"first"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_half_made_repository_folder_is_completed(tmp_path: Path) -> None:
    """A creator that crashed before its config left only the layout's folders."""
    root = tmp_path / "repo"
    for sub in ("data", "vms", "locks", "tmp"):
        (root / sub).mkdir(parents=True)
    assert Repository.open_or_init(root).config.version == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        Repository.open_or_init(other)
