"""The export history is private (folders 0700, records 0600, whatever the umask), and a
shared state folder is refused instead of being changed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hypersdk.errors import UsageError
from hypersdk.state.history import DiskEntry, ExportRecord, History


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _rec() -> ExportRecord:
    return ExportRecord(
        vm_id="qemu-1234",
        vm_name="vm1",
        export_time="2026-11-30T10:00:00Z",
        snapshot_id="s",
        change_id="g",
        disk_change_ids={"d": "c"},
        export_path="/r",
        total_size=1,
        disks=[DiskEntry("d", "p", 1, "c", "raw")],
    )


def test_records_are_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    history = History(tmp_path / "state")
    path = history.record(_rec())
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "incremental") == 0o700
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600


def test_an_old_open_history_is_made_private(tmp_path: Path, umask_022: None) -> None:
    folder = tmp_path / "state" / "incremental" / "qemu-1234"
    folder.mkdir(parents=True, mode=0o755)
    for p in (folder, folder.parent, folder.parent.parent):
        p.chmod(0o755)
    History(tmp_path / "state").record(_rec())
    assert {_mode(p) for p in (folder, folder.parent, folder.parent.parent)} == {0o700}


def test_a_shared_state_folder_is_refused_not_changed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UsageError, match="shared"):
        History(shared).record(_rec())
    assert _mode(shared) == 0o1777
    assert not (shared / "incremental").exists()
