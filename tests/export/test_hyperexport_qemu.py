"""hyperexport end to end against a real qemu-storage-daemon."""

from __future__ import annotations

import json
import os
import random
import threading
import time

from hypersdk.engine.export import ExportHooks, ExportRequest, run_export
from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon


def disk_now(qsd: QemuStorageDaemon) -> bytes:
    qsd.flush()
    return qsd.read(0, qsd.size)


def test_full_then_incrementals_restore_exactly(cli: Cli, qsd: QemuStorageDaemon) -> None:
    rng = random.Random(7)
    qsd.write(0, rng.randbytes(6 * MiB))
    qsd.write(20 * MiB, rng.randbytes(MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    full = cli.export(qsd.locator)
    assert full["mode"] == "full" and full["bytes_read"] == 7 * MiB  # holes are not read
    expected = {full["generation"]: disk_now(qsd)}
    assert set(full) >= {
        "vm",
        "generation",
        "mode",
        "reason",
        "bytes_read",
        "bytes_stored",
        "duration_s",
        "disks",
    }
    assert full["disks"][0]["key"] == "disk0"
    assert full["disks"][0]["capacity_bytes"] == 32 * MiB

    for step in range(3):
        qsd.write(step * 3 * MiB + 4096, rng.randbytes(100_000))
        qsd.zero(10 * MiB + step * MiB, MiB)  # zeroed areas are dirty too
        inc = cli.export(qsd.locator, "--incremental")
        assert inc["mode"] == "incremental", inc["reason"]
        assert inc["reason"] == "Incremental export possible"
        assert inc["bytes_read"] <= 2 * MiB
        expected[inc["generation"]] = disk_now(qsd)

    for gen, data in expected.items():
        assert cli.restore(full["vm"], gen, "disk0") == data

    gens = json.loads(
        cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json").stdout
    )
    assert [g["type"] for g in gens] == ["full"] + ["incremental"] * 3
    # the spec's history layout
    folder = cli.tmp / "state" / "incremental" / full["vm"]
    records = sorted(p.name for p in folder.glob("*.json") if p.name != "latest.json")
    assert len(records) == 4
    latest = folder / "latest.json"
    assert latest.is_symlink() and not os.path.isabs(os.readlink(latest))
    doc = json.loads(latest.read_text())
    assert doc["disk_change_ids"]["disk0"] == inc["disks"][0]["change_id"]
    assert set(doc) >= {
        "vm_id",
        "vm_name",
        "export_time",
        "snapshot_id",
        "change_id",
        "disk_change_ids",
        "export_path",
        "total_size",
        "disks",
    }
    assert doc["disks"][0]["capacity_bytes"] == 32 * MiB


def test_point_in_time_while_the_guest_writes(cli: Cli, qsd: QemuStorageDaemon) -> None:
    """The guest writes all through the copy, starting the moment the session is frozen:
    every generation equals the disk at the freeze, never a mix of before and after."""
    rng = random.Random(3)
    qsd.write(0, rng.randbytes(24 * MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    provider = open_provider(qsd.locator)
    history = History(cli.tmp / "state")
    expected: dict[str, bytes] = {}
    vm_id = ""
    try:
        for incremental in (False, True, True):
            for _ in range(20):  # changes for the incremental to pick up
                qsd.write(rng.randrange(0, 31 * MiB), rng.randbytes(64 * 1024))
            reference = disk_now(qsd)
            stop = threading.Event()
            writes = [0]

            def guest(stop: threading.Event = stop, writes: list[int] = writes) -> None:
                r = random.Random(11)
                while not stop.is_set():
                    qsd.write(r.randrange(0, 31) * MiB, r.randbytes(MiB))
                    writes[0] += 1

            writer = threading.Thread(target=guest)

            def frozen(mode: str, reason: str, total: int, w: threading.Thread = writer) -> None:
                w.start()  # the point in time is fixed: the guest may write from now on
                time.sleep(0.05)

            request = ExportRequest(output=str(cli.repo), incremental=incremental, parallel=4)
            try:
                report = run_export(provider, request, history, ExportHooks(on_plan=frozen))
            finally:
                stop.set()
                writer.join()
            assert writes[0] > 0
            assert report.mode == ("incremental" if incremental else "full"), report.reason
            assert disk_now(qsd) != reference  # the guest really changed the disk meanwhile
            expected[report.generation] = reference
            vm_id = report.vm
    finally:
        provider.close()
    for gen, data in expected.items():
        assert cli.restore(vm_id, gen, "disk0") == data
