"""One end-to-end test per real fallback: something happens to the VM, the repository or
the passing time, and an --incremental export becomes a full one with the exact sentence
the user sees, against a real qemu-storage-daemon. Every branch of the decision itself,
with edited inputs, is in tests/engine/test_decision.py (an injected clock, no hypervisor).
Ages are set relative to the clock of the run, so no outcome depends on today's date."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


def age_record(cli: Cli, vm: str, days: int) -> None:
    """The last export was made ``days`` days ago (and a few minutes), by this run's clock."""
    path = latest_record(cli, vm)
    doc = json.loads(path.read_text())
    then = datetime.now(UTC) - timedelta(days=days, minutes=5)
    doc["export_time"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(doc))


def age(cli: Cli, qsd: QemuStorageDaemon, full: dict) -> None:  # type: ignore[type-arg]
    age_record(cli, full["vm"], 10)


Reason = Callable[[Cli, QemuStorageDaemon, dict], str]  # type: ignore[type-arg]


@pytest.mark.parametrize(
    "break_chain, reason",
    [
        (delete_bitmap,
         lambda c, q, full: f"checkpoint bitmap {full['disks'][0]['change_id']} does not exist"),
        (resize, lambda c, q, full: "Disk disk0 was resized since the last export "
                                    f"({32 * MiB} -> {48 * MiB} bytes)"),
        (delete_generation,
         lambda c, q, full: f"Previous generation {full['generation']} is no longer in {c.repo}"),
        (age, lambda c, q, full: "Previous export is 10 days old (maximum 7 days): "
                                 "a new full baseline is recommended"),
    ],
    ids=["bitmap-deleted", "resized", "generation-deleted", "too-old"],
)  # fmt: skip
def test_fallback_to_full(
    cli: Cli,
    qsd: QemuStorageDaemon,
    break_chain: Callable[[Cli, QemuStorageDaemon, dict], None],  # type: ignore[type-arg]
    reason: Reason,
) -> None:
    full = baseline(cli, qsd)
    break_chain(cli, qsd, full)
    expected = reason(cli, qsd, full)
    info = cli.run(
        "hyperexport", "--vm", qsd.locator, "--output", str(cli.repo), "--incremental-info"
    )
    assert info.returncode == 0, info.stderr
    assert "✗ Full export required" in info.stdout and expected in info.stdout, info.stdout
    out = cli.export(qsd.locator, "--incremental")
    assert (out["mode"], out["reason"]) == ("full", expected)
    # the new full export is a sound base again: the next one is incremental
    qsd.write(0, os.urandom(4096))
    again = cli.export(qsd.locator, "--incremental")
    assert (again["mode"], again["reason"]) == ("incremental", "Incremental export possible")


def test_cbt_turned_off_then_on_needs_a_new_baseline(cli: Cli, qsd: QemuStorageDaemon) -> None:
    baseline(cli, qsd)
    assert cli.run("hyperexport", "--vm", qsd.locator, "--disable-cbt").returncode == 0
    off = cli.export(qsd.locator, "--incremental")
    assert (off["mode"], off["reason"]) == ("full", "no usable checkpoint bitmap on disk0")
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    on = cli.export(qsd.locator, "--incremental")
    assert (on["mode"], on["reason"]) == (
        "full",
        "Previous export was made without CBT: a new baseline is needed",
    )
    qsd.write(0, os.urandom(4096))
    again = cli.export(qsd.locator, "--incremental")
    assert (again["mode"], again["reason"]) == ("incremental", "Incremental export possible")


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
    """A 10-day-old export: too old by default and for 9 days, young enough for 400."""
    full = baseline(cli, qsd)
    age_record(cli, full["vm"], 10)
    info = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(cli.repo),
                   "--incremental-info", "--max-incremental-age", "9")  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert "Previous export is 10 days old (maximum 9 days)" in info.stdout, info.stdout
    out = cli.export(qsd.locator, "--incremental", "--max-incremental-age", "400")
    assert (out["mode"], out["reason"]) == ("incremental", "Incremental export possible")


def test_another_repository_starts_its_own_chain(cli: Cli, qsd: QemuStorageDaemon) -> None:
    baseline(cli, qsd)
    other = cli.tmp / "other-repo"
    proc = cli.run(
        "hyperexport", "--vm", qsd.locator, "--output", str(other), "--incremental", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # the history is read per repository: the other one has no previous export of the VM
    assert (doc["mode"], doc["reason"]) == (
        "full",
        "No previous export: this export is the baseline",
    )
