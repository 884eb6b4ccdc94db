"""Full or incremental: the spec's five steps, in the spec's order, plus the guards that
keep a chain from being built on a base that is not there.

One function serves the CLI, the daemon and the SDKs. Each reason is one sentence a user
understands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypersdk.errors import HyperSDKError, IntegrityError
from hypersdk.providers.base import CbtStatus, ChangeIdCheck
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.state.history import ExportRecord

POSSIBLE = "Incremental export possible"
DEFAULT_MAX_AGE = timedelta(days=7)


@dataclass
class Decision:
    can_incremental: bool
    reason: str
    parent: Manifest | None = None  # the generation an incremental builds on
    since: dict[str, str] | None = None  # disk key -> previous change id


def _full(reason: str) -> Decision:
    return Decision(False, reason)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def decide(
    cbt: CbtStatus,
    last: ExportRecord | None,
    *,
    check_change_id: Callable[[str, str], ChangeIdCheck],
    repo: Repository | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> Decision:
    # 1. CBT enabled
    if not cbt.enabled:
        return _full(cbt.reason or "Changed block tracking (CBT) is not enabled on this VM")
    untracked = [d for d in cbt.disks if not d.cbt_supported or not d.change_id]
    if untracked:
        d = untracked[0]
        why = d.cbt_reason or "it has no change id"
        return _full(f"Disk {d.key} cannot be tracked: {why}")
    # 2. previous export
    if last is None:
        return _full("No previous export: this export is the baseline")
    # 3. disk topology
    before = {d.key for d in last.disks}
    now_keys = {d.key for d in cbt.disks}
    if before != now_keys:
        parts = []
        if now_keys - before:
            parts.append("added " + ", ".join(sorted(now_keys - before)))
        if before - now_keys:
            parts.append("removed " + ", ".join(sorted(before - now_keys)))
        return _full(f"Disk topology changed since the last export ({'; '.join(parts)})")
    # 4. age
    age = (now or datetime.now(UTC)) - last.time
    if age > max_age:
        return _full(
            f"Previous export is {_plural(age.days, 'day')} old (maximum "
            f"{_plural(max_age.days, 'day')}): a new full baseline is recommended"
        )
    # 5. previous export had CBT
    if not last.cbt_enabled or any(not last.disk_change_ids.get(k) for k in before):
        return _full("Previous export was made without CBT: a new baseline is needed")

    # Guards beyond the spec's steps.
    old_caps = {d.key: d.capacity_bytes for d in last.disks}
    for d in cbt.disks:
        if d.capacity_bytes != old_caps[d.key]:
            return _full(
                f"Disk {d.key} was resized since the last export "
                f"({old_caps[d.key]} -> {d.capacity_bytes} bytes)"
            )
    parent: Manifest | None = None
    if repo is not None:
        if last.repository_id and last.repository_id != repo.config.id:
            return _full(f"The last export went to another repository ({last.export_path})")
        try:
            parent = repo.generation(last.vm_id, last.generation)
        except IntegrityError as err:
            return _full(f"Previous generation {last.generation} is damaged: {err}")
        except HyperSDKError:
            return _full(f"Previous generation {last.generation} is no longer in {repo.location}")
        # Both ways: the history names the base, and the base must say the same. Change ids
        # from a history that does not match its generation would read the changes since
        # some other point and leave stale blocks in the new generation.
        parent_caps = {d.key: d.capacity_bytes for d in parent.disks}
        parent_ids = {d.key: d.change_id for d in parent.disks}
        if parent_caps != old_caps:
            return _full(f"Generation {parent.id} does not match the export history")
        if parent_ids != last.disk_change_ids:
            return _full(
                f"The change ids of generation {parent.id} do not match the export history"
            )
    for key in sorted(before):
        check = check_change_id(key, last.disk_change_ids[key])
        if not check.valid:
            return _full(
                check.reason or f"The platform no longer knows the change id of disk {key}"
            )
    return Decision(True, POSSIBLE, parent, dict(last.disk_change_ids))
