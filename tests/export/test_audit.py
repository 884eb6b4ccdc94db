"""The CBT audit on QEMU: a bitmap that stops recording makes an incremental miss a
change; an audit export names the missed range exactly and marks that generation."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2


def audit_export(cli: Cli, vm: str) -> tuple[dict[str, Any], str]:
    proc = cli.run(
        "hyperexport", "--vm", vm, "--output", str(cli.repo), "--force-full", "--audit", "--json"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc, proc.stderr


def generations(cli: Cli) -> dict[str, dict[str, Any]]:
    proc = cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json")
    assert proc.returncode == 0, proc.stderr
    return {g["id"]: g for g in json.loads(proc.stdout)}


def set_bitmaps(qsd: QemuStorageDaemon, enabled: bool) -> None:
    command = "block-dirty-bitmap-enable" if enabled else "block-dirty-bitmap-disable"
    names = list(qsd.bitmaps(qsd.node_name))
    assert names, "CBT should have made a checkpoint bitmap"
    for name in names:
        qsd.qmp(command, node=qsd.node_name, name=name)


def test_audit_on_qsd_names_the_missed_range(cli: Cli, qsd: QemuStorageDaemon) -> None:
    rng = random.Random(11)
    qsd.write(0, rng.randbytes(8 * MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    first, warning = audit_export(cli, qsd.locator)  # nothing to audit against yet
    assert first["mode"] == "full"
    assert first["audit"]["performed"] is False
    assert "No previous export" in first["audit"]["reason"]
    assert "warning" not in warning

    # The miss: the checkpoint bitmap stops recording while the guest writes 1 MiB.
    set_bitmaps(qsd, enabled=False)
    qsd.write(5 * MiB, rng.randbytes(MiB))
    set_bitmaps(qsd, enabled=True)
    qsd.write(12 * MiB + 4096, rng.randbytes(8192))  # tracked
    inc = cli.export(qsd.locator, "--incremental")
    assert inc["mode"] == "incremental" and inc["bytes_read"] == MiB  # 5 MiB was missed
    qsd.flush()
    now = qsd.read(0, qsd.size)
    assert cli.restore(inc["vm"], inc["generation"], "disk0") != now

    audit, stderr = audit_export(cli, qsd.locator)
    report = audit["audit"]
    assert report["performed"] and report["previous"] == inc["generation"]
    assert report["blocks_checked"] == 32 and report["blocks_missed"] == 1
    assert report["disks"] == [
        {
            "key": "disk0",
            "blocks_checked": 32,
            "blocks_missed": 1,
            "missed": [{"offset": 5 * MiB, "length": MiB}],
        }
    ]
    assert report["clean"] is False
    assert stderr.startswith("warning: CBT missed 1 of 32 blocks")
    assert inc["generation"] in stderr and "suspect" in stderr
    # The audit's own generation read everything: it is exact.
    assert audit["mode"] == "full" and audit["bytes_read"] == 9 * MiB  # the allocated blocks
    assert cli.restore(audit["vm"], audit["generation"], "disk0") == now

    gens = generations(cli)
    assert gens[inc["generation"]]["suspect"] is True
    assert gens[first["generation"]]["suspect"] is False
    assert gens[audit["generation"]]["audit"]["blocks_missed"] == 1
    table = cli.run("hyperctl", "generations", "--output", str(cli.repo)).stdout
    assert table.count("SUSPECT") == 1 and "audit-misses" in table
    suspect_row = next(line for line in table.splitlines() if "SUSPECT" in line)
    assert inc["generation"] in suspect_row  # piped, the table is never cut

    # Nothing missed since: a clean audit says so.
    qsd.write(20 * MiB, rng.randbytes(MiB))
    again, stderr = audit_export(cli, qsd.locator)
    assert again["audit"]["performed"] and again["audit"]["clean"]
    assert again["audit"]["blocks_missed"] == 0 and again["audit"]["disks"][0]["missed"] == []
    assert "warning" not in stderr
    assert generations(cli)[audit["generation"]]["suspect"] is False


def qemu_img_bitmap(image: Path, action: str, name: str) -> None:
    subprocess.run(["qemu-img", "bitmap", action, str(image), name], check=True)


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def test_audit_on_an_offline_qcow2(cli: Cli, tmp_path: Path) -> None:
    image = tmp_path / "vm1.qcow2"
    create_qcow2(image, 16 * MiB)
    qemu_io(image, "write -P 0x11 0 4M")
    vm = f"qcow2:{image}"
    assert cli.run("hyperexport", "--vm", vm, "--enable-cbt").returncode == 0
    full = cli.export(vm)
    checkpoint = full["disks"][0]["change_id"]
    qemu_img_bitmap(image, "--disable", checkpoint)
    qemu_io(image, "write -P 0x22 9M 64k")  # inside block 9, not recorded
    qemu_img_bitmap(image, "--enable", checkpoint)
    qemu_io(image, "write -P 0x33 2M 4k")  # recorded
    inc = cli.export(vm, "--incremental")
    assert inc["mode"] == "incremental" and inc["bytes_read"] == MiB

    audit, stderr = audit_export(cli, vm)
    assert audit["audit"]["previous"] == inc["generation"]
    assert audit["audit"]["disks"][0]["missed"] == [{"offset": 9 * MiB, "length": MiB}]
    assert "warning: CBT missed 1 of 16 blocks" in stderr
    key = audit["disks"][0]["key"]
    assert cli.restore(audit["vm"], audit["generation"], key) == raw_of(image, tmp_path)
    assert generations(cli)[inc["generation"]]["suspect"] is True


def raw_of(image: Path, tmp: Path) -> bytes:
    out = tmp / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(out)], check=True)
    return out.read_bytes()
