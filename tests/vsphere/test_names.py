"""The inventory path given to hyperexport (with or without its leading slash), the VM
id and the VM's name all name the VM in every hyperctl command (a real vcsim lab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypersdk.lab import VcsimLab
from tests.cli.names import check_every_command, check_unknown
from tests.vsphere.conftest import Cli, MiB, flat


def test_inventory_path_id_and_name(
    cli: Cli, lab: VcsimLab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.run("hyperexport", "--vm", "/DC0/vm/small", "--enable-cbt").returncode == 0
    first = cli.export("DC0/vm/small", "--incremental")  # exported without the slash
    lab.write("/DC0/vm/small", 2 * MiB, length=100_000, seed=4)
    cli.export("/DC0/vm/small", "--incremental")
    names = ["/DC0/vm/small", "DC0/vm/small", "/DC0/vm/small/", first["vm"], "small"]
    check_every_command(
        capsys, cli.repo, names, vm_id=first["vm"], disk=first["disks"][0]["key"],
        latest=flat(lab, "/DC0/vm/small"), tmp=tmp_path,
    )  # fmt: skip
    gens = json.loads(
        cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json").stdout
    )
    assert {g["locator"] for g in gens} == {"/DC0/vm/small"}
    check_unknown(capsys, cli.repo, "/DC0/vm/web")  # in the lab, not in the repository
    check_unknown(capsys, cli.repo, "web")


def test_unknown_vm_is_not_found(cli: Cli) -> None:
    proc = cli.run("hyperexport", "--vm", "/DC0/vm/nothing", "--output", str(cli.repo))
    assert proc.returncode == 2, proc.stderr
    assert "/DC0/vm/nothing" in proc.stderr and proc.stderr.count("\n") == 1
