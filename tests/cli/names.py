"""Every hyperctl command that names a VM, run with each name a user may give it.

Shared by the QEMU, qcow2 and vSphere tests: hyperexport runs as a subprocess there,
hyperctl runs in this process here (fast, and the same ``main`` the entry point calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hypersdk.cli.hyperctl import main as hyperctl_main


def hyperctl_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """(exit code, parsed stdout or None, stderr) of one in-process hyperctl run."""
    capsys.readouterr()
    code = hyperctl_main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def check_every_command(
    capsys: pytest.CaptureFixture[str],
    repo: Path,
    names: list[str],
    *,
    vm_id: str,
    disk: str,
    latest: bytes,
    tmp: Path,
) -> None:
    """generations, restore and verify accept each of ``names`` for the VM ``vm_id``, and
    the restored disk is ``latest``; then delete removes the oldest generation by the
    last name (the repository needs two generations of the VM)."""
    before: list[dict[str, Any]] = []
    for name in names:
        code, gens, err = hyperctl_json(capsys, "generations", "--output", str(repo), "--vm", name)
        assert code == 0, f"{name}: {err}"
        assert gens and {g["vm"] for g in gens} == {vm_id}, name
        before = gens

        target = tmp / "restored.raw"
        code, result, err = hyperctl_json(
            capsys, "restore", "--output", str(repo), "--vm", name, "--disk", disk,
            "--to", str(target), "--force",
        )  # fmt: skip
        assert code == 0, f"{name}: {err}"
        assert result["vm_id"] == vm_id and result["generation"] == gens[-1]["id"]
        assert target.read_bytes() == latest, name
        target.unlink()

        code, report, err = hyperctl_json(
            capsys, "verify", "--output", str(repo), "--vm", name, "--generation", "latest"
        )
        assert code == 0 and report["ok"] and report["generations"] == 1, f"{name}: {err}"

    assert len(before) >= 2, "delete needs a generation to spare"
    oldest = before[0]["id"]
    code, deleted, err = hyperctl_json(
        capsys, "delete", "--output", str(repo), "--vm", names[-1], "--generation", oldest
    )
    assert code == 0 and deleted == {"deleted": oldest, "vm": vm_id}, err
    code, after, _ = hyperctl_json(capsys, "generations", "--output", str(repo), "--vm", names[0])
    assert [g["id"] for g in after] == [g["id"] for g in before[1:]]


def check_unknown(capsys: pytest.CaptureFixture[str], repo: Path, name: str) -> None:
    """A VM the repository does not hold: exit 2 and a line naming it, for every command
    (never an empty list)."""
    commands = [
        ["generations"],
        ["restore", "--to", str(repo.parent / "unknown-vm.raw")],
        ["verify"],
        ["delete", "--generation", "latest"],
    ]
    for command in commands:
        capsys.readouterr()
        code = hyperctl_main([command[0], "--output", str(repo), "--vm", name, *command[1:]])
        out, err = capsys.readouterr()
        assert code == 2, (command, out, err)
        assert err.count("\n") == 1 and f"no VM {name!r}" in err, (command, err)
        assert out == ""
