"""Prune then gc on a repository with many generations: every kept generation restores
exactly and verifies clean; the latest and the next incremental's base always stay."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hypersdk.engine.prune import LATEST, NEXT_BASE, prune
from hypersdk.engine.retention import Retention
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from hypersdk.state.history import DiskEntry, ExportRecord, History
from tests.chain import BS, export, restored_bytes

START = datetime(2024, 5, 1, 21, 30, tzinfo=UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime]]:
    """The writer's clock: each generation is made at the time last put in the list."""
    now = [START]
    monkeypatch.setattr("hypersdk.engine.writer.utc_now", lambda: now[-1])
    yield now


def make_chain(
    repo: Repository, tmp: Path, clock: list[datetime], days: int, name: str = "vm1"
) -> dict[str, bytes]:
    """One export a day for ``days`` days, each changing a few blocks; id -> content."""
    rng = random.Random(days)
    image = tmp / f"{name}.raw"
    image.write_bytes(rng.randbytes(12 * BS))
    contents: dict[str, bytes] = {}
    parent = None
    for day in range(days):
        clock.append(START + timedelta(days=day))
        with image.open("r+b") as f:
            for _ in range(2):
                f.seek(rng.randrange(12) * BS)
                f.write(rng.randbytes(BS))
        parent = export(repo, {"d": image}, parent=parent, name=name).manifest
        contents[parent.id] = image.read_bytes()
    return contents


def test_prune_then_gc_keeps_every_kept_generation_whole(
    tmp_path: Path, clock: list[datetime]
) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    contents = make_chain(repo, tmp_path, clock, 30)
    make_chain(repo, tmp_path, clock, 3, name="vm2")
    before = sum(p.stat().st_size for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())

    dry = prune(repo, Retention(keep_daily=5, keep_weekly=2), "vm1", dry_run=True)
    assert len(dry.removed) == 30 - len(dry.kept) and dry.gc is None
    assert len(repo.generations("vm1")) == 30  # a dry run removes nothing

    report = prune(repo, Retention(keep_daily=5, keep_weekly=2), "vm1")
    kept = {i.id for i in report.kept}
    assert len(kept) == len(dry.kept) and {i.id for i in report.removed} == set(contents) - kept
    assert {m.id for m in repo.generations("vm1")} == kept
    assert len(repo.generations("vm2")) == 3  # another VM is not touched
    assert report.gc is not None and report.gc.bytes_removed > 0
    after = sum(p.stat().st_size for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    assert after == before - report.gc.bytes_removed
    for m in repo.generations("vm1"):
        assert restored_bytes(repo, m, "d", tmp_path) == contents[m.id]
    assert verify(repo, select(repo, None, None)).ok


def test_latest_and_next_base_stay_and_a_running_export_skips_the_vm(
    tmp_path: Path, clock: list[datetime]
) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    contents = make_chain(repo, tmp_path, clock, 4)
    ids = sorted(contents)
    history = History(tmp_path / "state")
    # The history names the second oldest as the base of the next incremental (as after
    # a later generation was copied in, or made by another tool).
    base = repo.generation("vm1", ids[1])
    history.record(
        ExportRecord(
            vm_id="vm1", vm_name="vm1", export_time=base.created[:19] + "Z",
            snapshot_id=base.id, change_id=base.id, disk_change_ids={"d": "c-d"},
            export_path=str(repo.root), total_size=12 * BS,
            disks=[DiskEntry("d", "", 12 * BS, "c-d", "")], platform="raw",
            generation=base.id, repository_id=repo.config.id, mode="incremental",
        )
    )  # fmt: skip
    with repo.writer("vm1"):  # an export of vm1 is running
        busy = prune(repo, Retention(keep_last=1), history=history)
    assert "vm1" in busy.skipped and busy.removed == [] and busy.gc is None
    report = prune(repo, Retention(keep_last=1), history=history)
    reasons = {i.id: i.reasons for i in report.items}
    assert reasons[ids[3]] == ("last", LATEST)
    assert reasons[ids[1]] == (NEXT_BASE,)
    assert {m.id for m in repo.generations("vm1")} == {ids[1], ids[3]}


def hyperctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_the_command(tmp_path: Path, clock: list[datetime]) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    contents = make_chain(repo, tmp_path, clock, 6)
    out = str(repo.root)
    proc = hyperctl("prune", "--output", out, "--keep-last", "2", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] and doc["kept"] == 2 and doc["removed"] == 4 and doc["gc"] is None
    assert doc["policy"] == {"keep_last": 2}
    actions = [(g["generation"], g["action"], g["reasons"]) for g in doc["generations"]]
    newest = sorted(contents, reverse=True)
    assert actions[0] == (newest[0], "keep", ["last", LATEST])
    assert actions[1] == (newest[1], "keep", ["last"])
    assert all(a == "remove" for _, a, _ in actions[2:])

    proc = hyperctl("prune", "--output", out, "--vm", "vm1", "--keep-last", "2")
    assert proc.returncode == 0, proc.stderr
    assert "kept 2 generation(s), removed 4" in proc.stdout and "gc: freed" in proc.stdout
    assert len(repo.generations("vm1")) == 2

    for bad, says in (
        ([], "no retention rule given"),
        (["--keep-within", "7x"], "duration '7x'"),
        (["--keep-daily", "-1"], "--keep-daily"),
    ):
        proc = hyperctl("prune", "--output", out, *bad)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2
    proc = hyperctl("prune", "--output", out, "--vm", "nope", "--keep-last", "1")
    assert proc.returncode != 0 and "nope" in proc.stderr
