"""Every decision step and guard that turns an --incremental into a full export, each
with the sentence the user sees, against a real qemu-storage-daemon."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon


def baseline(cli: Cli, qsd: QemuStorageDaemon) -> dict[str, object]:
    qsd.write(0, os.urandom(2 * MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    full = cli.export(qsd.locator)
    qsd.write(5 * MiB, os.urandom(4096))
    return full


def latest_record(cli: Cli, vm: str) -> Path:
    return (cli.tmp / "state" / "incremental" / vm / "latest.json").resolve()


def delete_bitmap(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    """Someone removes our checkpoint and CBT is turned on again: tracking is on, but it
    knows nothing of the change id the last export recorded."""
    qsd.qmp("block-dirty-bitmap-remove", node="disk0", name=full["disks"][0]["change_id"])
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0


def resize(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    # The rig's writable guest export forbids resizing: take it away while resizing.
    guest, qsd._guest = qsd._guest, None
    if guest is not None:
        guest.close()
    qsd.qmp("block-export-del", id=qsd.export_name, mode="hard")
    for _ in range(100):
        if not qsd.qmp("query-block-exports"):
            break
    qsd.qmp("block_resize", **{"node-name": "disk0", "size": 48 * MiB})
    qsd.qmp(
        "block-export-add",
        type="nbd",
        id=qsd.export_name,
        **{"node-name": "disk0"},
        name=qsd.export_name,
        writable=True,
    )


def delete_generation(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    proc = cli.run(
        "hyperctl",
        "delete",
        "--output",
        str(cli.repo),
        "--vm",
        full["vm"],
        "--generation",
        full["generation"],
    )
    assert proc.returncode == 0, proc.stderr


def age(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    path = latest_record(cli, full["vm"])
    doc = json.loads(path.read_text())
    doc["export_time"] = "2020-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))


def disable(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    assert cli.run("hyperexport", "--vm", qsd.locator, "--disable-cbt").returncode == 0


def no_cbt_before(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    path = latest_record(cli, full["vm"])
    doc = json.loads(path.read_text())
    doc["cbt_enabled"] = False
    path.write_text(json.dumps(doc))


def other_topology(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    path = latest_record(cli, full["vm"])
    doc = json.loads(path.read_text())
    doc["disks"].append(dict(doc["disks"][0], key="disk9"))
    doc["disk_change_ids"]["disk9"] = "x"
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "break_chain, reason",
    [
        (delete_bitmap, "does not exist"),
        (resize, "was resized"),
        (delete_generation, "is no longer in"),
        (age, "days old (maximum 7 days)"),
        (disable, "checkpoint"),
        (no_cbt_before, "Previous export was made without CBT"),
        (other_topology, "Disk topology changed since the last export (removed disk9)"),
    ],
    ids=[
        "bitmap-deleted",
        "resized",
        "generation-deleted",
        "too-old",
        "cbt-disabled",
        "previous-without-cbt",
        "topology",
    ],
)
def test_fallback_to_full(
    cli: Cli,
    qsd: QemuStorageDaemon,
    break_chain: Callable[[Cli, QemuStorageDaemon, dict], None],  # type: ignore[type-arg]
    reason: str,
) -> None:
    full = baseline(cli, qsd)
    break_chain(cli, qsd, full)
    info = cli.run(
        "hyperexport", "--vm", qsd.locator, "--output", str(cli.repo), "--incremental-info"
    )
    assert info.returncode == 0, info.stderr
    assert "✗ Full export required" in info.stdout and reason in info.stdout
    out = cli.export(qsd.locator, "--incremental")
    assert out["mode"] == "full"
    assert reason in out["reason"]
    # the new full export is a sound base again: the next one is incremental
    if break_chain is not disable:
        qsd.write(0, os.urandom(4096))
        again = cli.export(qsd.locator, "--incremental")
        assert again["mode"] == "incremental", again["reason"]


def test_no_previous_export_and_force_full(cli: Cli, qsd: QemuStorageDaemon) -> None:
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    first = cli.export(qsd.locator, "--incremental")
    assert first["mode"] == "full"
    assert first["reason"] == "No previous export: this export is the baseline"
    forced = cli.export(qsd.locator, "--incremental", "--force-full")
    assert forced["mode"] == "full" and "forced" in forced["reason"]
    assert forced["bytes_stored"] == 0  # a forced full stores only what is new
    plain = cli.export(qsd.locator)
    assert plain["mode"] == "full" and "no --incremental" in plain["reason"]


def test_max_incremental_age_flag(cli: Cli, qsd: QemuStorageDaemon) -> None:
    full = baseline(cli, qsd)
    path = latest_record(cli, full["vm"])
    doc = json.loads(path.read_text())
    doc["export_time"] = doc["export_time"][:8] + "01T00:00:00Z"  # the 1st of this month
    path.write_text(json.dumps(doc))
    out = cli.export(qsd.locator, "--incremental", "--max-incremental-age", "400")
    assert out["mode"] == "incremental", out["reason"]


def test_another_repository_starts_its_own_chain(cli: Cli, qsd: QemuStorageDaemon) -> None:
    baseline(cli, qsd)
    other = cli.tmp / "other-repo"
    proc = cli.run(
        "hyperexport", "--vm", qsd.locator, "--output", str(other), "--incremental", "--json"
    )
    assert json.loads(proc.stdout)["mode"] == "full"
