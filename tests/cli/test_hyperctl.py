"""hyperctl against a real repository: JSON shapes, formats, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hypersdk.repository.repository import Repository
from tests.chain import BS, export
from tests.repository.test_damage import hyperctl


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    a = tmp_path / "a.raw"
    a.write_bytes(os.urandom(5 * BS) + bytes(3 * BS))
    full = export(repo, {"disk-0": a})
    export(repo, {"disk-0": a}, changed={"disk-0": []}, parent=full.manifest)
    b1, b2 = tmp_path / "b1.raw", tmp_path / "b2.raw"
    b1.write_bytes(os.urandom(2 * BS))
    b2.write_bytes(os.urandom(3 * BS))
    export(repo, {"disk-1": b1, "disk-2": b2}, name="vm2")
    return repo


def test_generations_json(repo: Repository) -> None:
    proc = hyperctl("generations", "--output", str(repo.root), "--json")
    assert proc.returncode == 0, proc.stderr
    gens = json.loads(proc.stdout)
    assert [(g["vm"], g["type"]) for g in gens] == [
        ("vm1", "full"),
        ("vm1", "incremental"),
        ("vm2", "full"),
    ]
    assert gens[1]["parent"] == gens[0]["id"] and gens[0]["parent"] is None
    assert gens[0]["created"] <= gens[1]["created"]
    assert gens[2]["disks"] == [
        {"key": "disk-1", "capacity_bytes": 2 * BS, "change_id": "c-disk-1"},
        {"key": "disk-2", "capacity_bytes": 3 * BS, "change_id": "c-disk-2"},
    ]
    only = json.loads(
        hyperctl("generations", "--output", str(repo.root), "--vm", "vm2", "--json").stdout
    )
    assert [g["vm"] for g in only] == ["vm2"]
    table = hyperctl("generations", "--output", str(repo.root))
    assert "incremental" in table.stdout and table.returncode == 0


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_restore_formats(repo: Repository, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    proc = hyperctl(
        "restore",
        "--output",
        str(repo.root),
        "--vm",
        "vm1",
        "--to",
        str(out),
        "--format",
        fmt,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"] == fmt
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", fmt, str(tmp_path / "a.raw"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    if fmt == "raw":  # zero blocks stay holes
        assert os.stat(out).st_blocks * 512 <= 5 * BS


def test_restore_needs_disk_when_several(repo: Repository, tmp_path: Path) -> None:
    out = tmp_path / "x.raw"
    proc = hyperctl("restore", "--output", str(repo.root), "--vm", "vm2", "--to", str(out))
    assert proc.returncode == 2
    assert "--disk" in proc.stderr and "disk-1, disk-2" in proc.stderr
    ok = hyperctl(
        "restore",
        "--output",
        str(repo.root),
        "--vm",
        "vm2",
        "--disk",
        "disk-2",
        "--to",
        str(out),
        "--quiet",
    )
    assert ok.returncode == 0 and out.read_bytes() == (tmp_path / "b2.raw").read_bytes()


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["generations", "--output", "/nonexistent/repo"], 2, "not a HyperSDK repository"),
        (["restore", "--output", "{repo}", "--vm", "nope", "--to", "{tmp}/x"], 2, "no VM 'nope'"),
        (
            [
                "restore",
                "--output",
                "{repo}",
                "--vm",
                "vm1",
                "--generation",
                "zzz",
                "--to",
                "{tmp}/x",
            ],
            2,
            "no generation 'zzz'",
        ),
        (["restore", "--output", "{repo}", "--vm", "vm1", "--to", "{tmp}/a.raw"], 2, "exists"),
        (
            ["restore", "--output", "{repo}", "--vm", "vm1", "--to", "/nonexistent/dir/x"],
            2,
            "does not exist",
        ),
        (["verify", "--output", "{repo}", "--generation", "x"], 2, "needs --vm"),
        (["restore", "--output", "{repo}"], 2, "required"),
    ],
)
def test_errors_are_one_line(
    repo: Repository, tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    argv = [a.format(repo=repo.root, tmp=tmp_path) for a in args]
    before = (tmp_path / "a.raw").read_bytes()
    proc = hyperctl(*argv)
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3 and "Traceback" not in proc.stderr
    assert (tmp_path / "a.raw").read_bytes() == before  # nothing lost on bad input


def test_delete_and_gc(repo: Repository) -> None:
    gens = json.loads(hyperctl("generations", "--output", str(repo.root), "--json").stdout)
    assert (
        hyperctl(
            "delete", "--output", str(repo.root), "--vm", "vm2", "--generation", gens[2]["id"]
        ).returncode
        == 0
    )
    gc = json.loads(hyperctl("gc", "--output", str(repo.root), "--json").stdout)
    assert gc["chunks_removed"] == 5 and gc["indexes_removed"] == 1  # the deleted one
    assert hyperctl("verify", "--output", str(repo.root)).returncode == 0
