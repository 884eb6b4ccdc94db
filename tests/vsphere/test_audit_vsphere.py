"""The CBT audit on vSphere: the lab's knob drops one changed area from
QueryChangedDiskAreas, as ESXi's CBT bugs did; an audit export finds it."""

from __future__ import annotations

import json
import random

from hypersdk.lab import VcsimLab
from tests.vsphere.conftest import Cli, KiB, MiB, flat

BS = 64 * KiB
WEB = "/DC0/vm/web"


def test_audit_finds_the_area_cbt_dropped(cli: Cli, lab: VcsimLab) -> None:
    rng = random.Random(3)
    lab.write(WEB, 0, rng.randbytes(4 * MiB))
    assert cli.run("hyperexport", "--vm", WEB, "--enable-cbt").returncode == 0
    full = cli.export(WEB, "--incremental")
    key = full["disks"][0]["key"]

    lab.config(drop_changed_area=True)
    lab.write(WEB, 1 * MiB, length=BS, seed=1)  # the first area: dropped
    lab.write(WEB, 3 * MiB, length=BS, seed=2)
    inc = cli.export(WEB, "--incremental")
    assert inc["mode"] == "incremental" and inc["bytes_read"] == BS  # one area missed
    lab.config(drop_changed_area=False)
    assert cli.restore(inc["vm"], inc["generation"], key) != flat(lab, WEB)

    proc = cli.run(
        "hyperexport", "--vm", WEB, "--output", str(cli.repo), "--block-size", "64K",
        "--force-full", "--audit", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    audit = json.loads(proc.stdout)
    assert audit["audit"]["previous"] == inc["generation"]
    assert audit["audit"]["blocks_missed"] == 1
    assert audit["audit"]["disks"][0]["missed"] == [{"offset": MiB, "length": BS}]
    assert f"generation {inc['generation']}: that generation is suspect" in proc.stderr
    assert cli.restore(audit["vm"], audit["generation"], key) == flat(lab, WEB)

    listed = cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json")
    suspects = [g["id"] for g in json.loads(listed.stdout) if g["suspect"]]
    assert suspects == [inc["generation"]]

    clean = cli.run(
        "hyperexport", "--vm", WEB, "--output", str(cli.repo), "--block-size", "64K",
        "--audit", "--json",
    )  # fmt: skip
    report = json.loads(clean.stdout)["audit"]
    assert report["clean"] and report["blocks_checked"] == 1024 and report["blocks_missed"] == 0
    assert "warning" not in clean.stderr
    shown = cli.run(
        "hyperexport", "--vm", WEB, "--output", str(cli.repo), "--block-size", "64K", "--audit"
    )  # fmt: skip
    assert "clean, 1024 blocks checked, none missed" in shown.stderr
