"""Every branch of ``decide()`` in one table: the inputs of a row, and the exact sentence
the user sees. The clock is injected (``now=``), so no row depends on today's date; where
a repository is involved it is a real one with a real generation (tests.chain), damaged or
emptied the way a user's would be."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hypersdk.engine.decision import DEFAULT_MAX_AGE, POSSIBLE, decide
from hypersdk.providers.base import CbtStatus, ChangeIdCheck, DiskInfo
from hypersdk.repository.repository import Repository
from hypersdk.state.history import DiskEntry, ExportRecord
from tests.chain import BS, export

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SIZE = 4 * BS
KEYS = ("disk-0", "disk-1")


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _valid(key: str, change_id: str) -> ChangeIdCheck:
    return ChangeIdCheck(True)


def _refuse(reason: str) -> Callable[[str, str], ChangeIdCheck]:
    """A platform that refuses the change id of disk-1 only (the other must pass first)."""

    def check(key: str, change_id: str) -> ChangeIdCheck:
        return ChangeIdCheck(False, reason) if key == "disk-1" else ChangeIdCheck(True)

    return check


@dataclass
class World:
    """The inputs of one decide() call; each row changes some of them."""

    repo: Repository
    gen: str
    cbt: CbtStatus
    last: ExportRecord | None
    check: Callable[[str, str], ChangeIdCheck] = _valid
    use_repo: bool = True
    max_age: timedelta = DEFAULT_MAX_AGE
    now: datetime = NOW
    seen: list[str] = field(default_factory=list)

    @property
    def record(self) -> ExportRecord:
        assert self.last is not None
        return self.last

    def disk(self, key: str) -> DiskInfo:
        return next(d for d in self.cbt.disks if d.key == key)

    def manifest_path(self) -> Path:
        return self.repo.layout.vm("vm1") / "generations" / f"{self.gen}.json"


@pytest.fixture()
def world(tmp_path: Path) -> World:
    """Two disks exported as one real generation, and the history record that names it:
    as it stands, an incremental is possible."""
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    images = {}
    for key in KEYS:
        images[key] = tmp_path / f"{key}.raw"
        images[key].write_bytes(bytes([len(images)]) * SIZE)
    gen = export(repo, images, name="vm1").manifest.id
    # tests.chain records the change id "c-<disk key>" in the manifest
    last = ExportRecord(
        vm_id="vm1",
        vm_name="vm1",
        export_time=_stamp(NOW - timedelta(hours=1)),
        snapshot_id="s",
        change_id=gen,
        disk_change_ids={k: f"c-{k}" for k in KEYS},
        export_path=str(repo.root),
        total_size=2 * SIZE,
        disks=[DiskEntry(k, f"/{k}", SIZE, f"c-{k}", "raw") for k in KEYS],
        generation=gen,
        repository_id=repo.config.id,
    )
    cbt = CbtStatus(True, [DiskInfo(k, f"/{k}", SIZE, f"c-{k}/next", "raw") for k in KEYS])
    return World(repo, gen, cbt, last)


# -- how each row changes the world ------------------------------------------------------


def cbt_off(w: World) -> None:
    w.cbt = CbtStatus(False, w.cbt.disks)


def cbt_off_with_reason(w: World) -> None:
    w.cbt = CbtStatus(False, [], reason="The VM has no disks that can be tracked")


def disk_unsupported(w: World) -> None:
    d = w.disk("disk-1")
    d.cbt_supported, d.cbt_reason = False, "an independent disk has no change tracking"


def disk_unsupported_no_reason(w: World) -> None:
    w.disk("disk-0").cbt_supported = False


def disk_without_change_id(w: World) -> None:
    w.disk("disk-1").change_id = ""


def no_previous_export(w: World) -> None:
    w.last = None


def disk_added(w: World) -> None:
    w.cbt.disks.append(DiskInfo("disk-2", "/disk-2", SIZE, "c-disk-2/1", "raw"))


def disk_removed(w: World) -> None:
    w.cbt.disks.pop()


def disk_replaced(w: World) -> None:
    w.cbt.disks[0] = replace(w.cbt.disks[0], key="disk-9")


def aged(delta: timedelta, max_age: timedelta = DEFAULT_MAX_AGE) -> Callable[[World], None]:
    def arrange(w: World) -> None:
        w.record.export_time = _stamp(NOW - delta)
        w.max_age = max_age

    arrange.__name__ = f"aged_{delta.days}d{delta.seconds}s_max_{max_age.days}d"
    return arrange


def previous_without_cbt(w: World) -> None:
    w.record.cbt_enabled = False


def previous_without_a_change_id(w: World) -> None:
    w.record.disk_change_ids["disk-1"] = ""


def previous_missing_a_change_id(w: World) -> None:
    del w.record.disk_change_ids["disk-1"]


def grown(w: World) -> None:
    w.disk("disk-1").capacity_bytes = 2 * SIZE


def another_repository(w: World) -> None:
    w.record.repository_id = "0f" * 16
    w.record.export_path = "/backups/elsewhere"


def record_without_repository_id(w: World) -> None:
    w.record.repository_id = ""  # written before records named their repository


def generation_gone(w: World) -> None:
    w.manifest_path().unlink()


def generation_damaged(w: World) -> None:
    path = w.manifest_path()
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def capacities_differ_from_manifest(w: World) -> None:
    # the history and the platform agree on a size the generation never had
    for d in w.record.disks:
        d.capacity_bytes = 2 * SIZE
    for info in w.cbt.disks:
        info.capacity_bytes = 2 * SIZE


def history_ids_differ_from_manifest(w: World) -> None:
    w.record.disk_change_ids["disk-1"] = "c-disk-1-of-another-export"


def history_ids_differ_without_repository(w: World) -> None:
    history_ids_differ_from_manifest(w)
    w.use_repo = False  # without a repository only the platform can judge the change ids


def malformed(w: World) -> None:
    w.check = _refuse("The previous change id of disk-1 is malformed")


def newer(w: World) -> None:
    w.check = _refuse("The previous change id of disk-1 is newer than the disk's")


def unknown(w: World) -> None:
    w.check = _refuse("checkpoint bitmap c-disk-1 does not exist")


def refused_without_reason(w: World) -> None:
    w.check = _refuse("")


def unchanged(w: World) -> None:
    pass


DAY, SECOND = timedelta(days=1), timedelta(seconds=1)
# (how the world changes, the exact reason); {gen}, {root} and {damage} are filled in.
ROWS: list[tuple[Callable[[World], None], str]] = [
    (cbt_off, "Changed block tracking (CBT) is not enabled on this VM"),
    (cbt_off_with_reason, "The VM has no disks that can be tracked"),
    (disk_unsupported,
     "Disk disk-1 cannot be tracked: an independent disk has no change tracking"),
    (disk_unsupported_no_reason, "Disk disk-0 cannot be tracked: it has no change id"),
    (disk_without_change_id, "Disk disk-1 cannot be tracked: it has no change id"),
    (no_previous_export, "No previous export: this export is the baseline"),
    (disk_added, "Disk topology changed since the last export (added disk-2)"),
    (disk_removed, "Disk topology changed since the last export (removed disk-1)"),
    (disk_replaced,
     "Disk topology changed since the last export (added disk-9; removed disk-0)"),
    (aged(7 * DAY), POSSIBLE),  # exactly the maximum age is still young enough
    (aged(7 * DAY + SECOND),
     "Previous export is 7 days old (maximum 7 days): a new full baseline is recommended"),
    (aged(30 * DAY),
     "Previous export is 30 days old (maximum 7 days): a new full baseline is recommended"),
    (aged(2 * DAY, max_age=DAY),
     "Previous export is 2 days old (maximum 1 day): a new full baseline is recommended"),
    (aged(20 * DAY, max_age=400 * DAY), POSSIBLE),
    (aged(-DAY), POSSIBLE),  # a clock that went back a day is not "too old"
    (previous_without_cbt, "Previous export was made without CBT: a new baseline is needed"),
    (previous_without_a_change_id,
     "Previous export was made without CBT: a new baseline is needed"),
    (previous_missing_a_change_id,
     "Previous export was made without CBT: a new baseline is needed"),
    (grown, f"Disk disk-1 was resized since the last export ({SIZE} -> {2 * SIZE} bytes)"),
    (another_repository, "The last export went to another repository (/backups/elsewhere)"),
    (record_without_repository_id, POSSIBLE),
    (generation_gone, "Previous generation {gen} is no longer in {root}"),
    (generation_damaged, "Previous generation {gen} is damaged: {damage}"),
    (capacities_differ_from_manifest, "Generation {gen} does not match the export history"),
    (history_ids_differ_from_manifest,
     "The change ids of generation {gen} do not match the export history"),
    (history_ids_differ_without_repository, POSSIBLE),
    (malformed, "The previous change id of disk-1 is malformed"),
    (newer, "The previous change id of disk-1 is newer than the disk's"),
    (unknown, "checkpoint bitmap c-disk-1 does not exist"),
    (refused_without_reason, "The platform no longer knows the change id of disk disk-1"),
    (unchanged, POSSIBLE),
]  # fmt: skip


@pytest.mark.parametrize(("arrange", "expected"), ROWS, ids=[a.__name__ for a, _ in ROWS])
def test_decide(world: World, arrange: Callable[[World], None], expected: str) -> None:
    arrange(world)
    damage = [b.problem for b in world.repo.damaged("vm1")]
    assert bool(damage) is ("{damage}" in expected)  # only the damaged row damages it
    expected = expected.format(
        gen=world.gen,
        root=world.repo.root,
        damage=f"generation {world.gen} of VM 'vm1' is damaged: {damage[0]}" if damage else "",
    )

    def check(key: str, change_id: str) -> ChangeIdCheck:
        world.seen.append(f"{key}={change_id}")
        return world.check(key, change_id)

    decision = decide(
        world.cbt,
        world.last,
        check_change_id=check,
        repo=world.repo if world.use_repo else None,
        max_age=world.max_age,
        now=world.now,
    )
    assert decision.reason == expected
    assert decision.can_incremental is (expected == POSSIBLE)
    if decision.can_incremental:
        # the base is the generation the history names, read from the repository
        assert decision.since == world.record.disk_change_ids
        if world.use_repo:
            assert decision.parent is not None and decision.parent.id == world.gen
        # the platform was asked about every disk's previous change id, in key order
        assert world.seen == [f"{k}={world.record.disk_change_ids[k]}" for k in KEYS]
    else:
        assert decision.parent is None and decision.since is None


def test_age_is_measured_from_the_injected_clock(world: World) -> None:
    """The same record is young at one ``now`` and too old two days later."""
    world.record.export_time = _stamp(NOW - 6 * DAY)
    young = decide(world.cbt, world.last, check_change_id=_valid, repo=world.repo, now=NOW)
    old = decide(world.cbt, world.last, check_change_id=_valid, repo=world.repo, now=NOW + 2 * DAY)
    assert young.reason == POSSIBLE
    assert old.reason.startswith("Previous export is 8 days old (maximum 7 days)")
