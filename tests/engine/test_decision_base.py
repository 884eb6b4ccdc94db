"""A damaged history record is skipped with a warning, never trusted and never a traceback.
(The two-way check of an incremental's base is in the decide() table, test_decision.py.)"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hypersdk.repository.repository import Repository
from hypersdk.state.history import DiskEntry, ExportRecord, History
from tests.chain import BS, export

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _record(repo: Repository, generation: str, change_id: str) -> ExportRecord:
    return ExportRecord(
        vm_id="vm1",
        vm_name="vm1",
        export_time=(NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        snapshot_id="s",
        change_id=generation,
        disk_change_ids={"disk-0": change_id},
        export_path=str(repo.root),
        total_size=4 * BS,
        disks=[DiskEntry("disk-0", "p", 4 * BS, change_id, "raw")],
        generation=generation,
        repository_id=repo.config.id,
    )


@pytest.fixture()
def repo_gen(tmp_path: Path) -> tuple[Repository, str]:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(4 * BS))
    return repo, export(repo, {"disk-0": image}, name="vm1").manifest.id


def test_damaged_history_records_are_skipped(
    tmp_path: Path, repo_gen: tuple[Repository, str], caplog: pytest.LogCaptureFixture
) -> None:
    repo, gen = repo_gen
    history = History(tmp_path / "state")
    good = history.record(_record(repo, gen, "c-disk-0"))
    folder = good.parent
    doc = json.loads(good.read_text())
    bad = {
        "a-not-json.json": b"{",
        "b-list.json": b"[]",
        "c-no-disks.json": json.dumps({k: v for k, v in doc.items() if k != "disks"}).encode(),
        "d-time.json": json.dumps({**doc, "export_time": "yesterday"}).encode(),
        "e-size.json": json.dumps({**doc, "total_size": "big"}).encode(),
        "f-ids.json": json.dumps({**doc, "disk_change_ids": {"disk-0": 7}}).encode(),
        "g-disk.json": json.dumps({**doc, "disks": [{"key": "disk-0"}]}).encode(),
        "h-bool.json": json.dumps({**doc, "total_size": True}).encode(),
        # sorts after the good record: it would be "latest" if it were trusted
        "z-newer.json": json.dumps({**doc, "export_time": 5}).encode(),
    }
    for name, blob in bad.items():
        (folder / name).write_bytes(blob)
    with caplog.at_level(logging.WARNING):
        records = history.records("vm1")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.generation for r in records] == [gen]
    assert history.latest("vm1") == records[0]
    assert len(skipped) == len(bad), skipped
    assert all(any(name in m for m in skipped) for name in bad)
