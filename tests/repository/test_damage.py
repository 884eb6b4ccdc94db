"""Bit rot and truncation must be found by verify and refused by restore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypersdk.errors import IntegrityError
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export


def hyperctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture()
def repo_with_two(tmp_path: Path) -> tuple[Repository, Path]:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(6 * BS))
    full = export(repo, {"disk-0": img})
    export(repo, {"disk-0": img}, changed={"disk-0": []}, parent=full.manifest)
    return repo, tmp_path


def test_flipped_byte_in_a_chunk(repo_with_two: tuple[Repository, Path]) -> None:
    repo, tmp = repo_with_two
    gens = repo.generations("vm1")
    index = repo.load_index(gens[0], "disk-0")
    block, cid = list(index.chunks())[3]
    path = repo.layout.chunk(cid)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))

    proc = hyperctl("verify", "--output", str(repo.root), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["ok"]
    damaged = {(d["generation"], d["disk"], d["chunk"]) for d in report["damage"]}
    assert damaged == {(g.id, "disk-0", cid.hex()) for g in gens}  # both generations use it
    assert report["damage"][0]["ranges"] == [[block * BS, (block + 1) * BS]]

    text = hyperctl("verify", "--output", str(repo.root))
    assert text.returncode == 1
    assert f"bytes {block * BS}-{(block + 1) * BS}" in text.stdout
    assert "vm1" in text.stdout and gens[1].id in text.stdout

    with pytest.raises(IntegrityError, match=cid.hex()):
        restore_disk(repo, gens[1], "disk-0", tmp / "out.raw")
    assert not (tmp / "out.raw").exists()
    assert not [p for p in tmp.iterdir() if "partial" in p.name]
    proc = hyperctl(
        "restore", "--output", str(repo.root), "--vm", "vm1", "--to", str(tmp / "o.raw")
    )
    assert proc.returncode == 1
    assert "checksum mismatch (CRC32C)" in proc.stderr and "Traceback" not in proc.stderr


def test_truncated_index(repo_with_two: tuple[Repository, Path]) -> None:
    repo, tmp = repo_with_two
    latest = repo.generations("vm1")[-1]
    idx = repo.root / latest.disks[0].index
    idx.write_bytes(idx.read_bytes()[:-50])
    proc = hyperctl("verify", "--output", str(repo.root), "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [(d["generation"], d["chunk"]) for d in report["damage"]] == [(latest.id, "")]
    assert "checksum" in report["damage"][0]["problem"]
    with pytest.raises(IntegrityError):
        restore_disk(repo, latest, "disk-0", tmp / "out.raw")
    # the other generation is untouched and still verifies
    first = repo.generations("vm1")[0]
    ok = hyperctl("verify", "--output", str(repo.root), "--vm", "vm1", "--generation", first.id)
    assert ok.returncode == 0, ok.stdout


def test_missing_chunk_is_damage(repo_with_two: tuple[Repository, Path]) -> None:
    repo, _ = repo_with_two
    _, cid = next(repo.load_index(repo.generations("vm1")[0], "disk-0").chunks())
    repo.layout.chunk(cid).unlink()
    report = json.loads(hyperctl("verify", "--output", str(repo.root), "--json").stdout)
    assert any("missing" in d["problem"] for d in report["damage"])


def test_manifest_of_another_repository_is_refused(tmp_path: Path) -> None:
    a = Repository.open_or_init(tmp_path / "a", block_size=BS)
    b = Repository.open_or_init(tmp_path / "b", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(2 * BS))
    m = export(a, {"disk-0": img}).manifest
    target = b.layout.manifest("vm1", m.id)
    target.parent.mkdir(parents=True)
    target.write_bytes(a.layout.manifest("vm1", m.id).read_bytes())
    assert b.generations("vm1") == []  # skipped with a warning, never trusted
    with pytest.raises(IntegrityError, match="another repository"):
        b.generation("vm1", m.id)


def test_an_index_path_outside_its_place_is_refused(repo_with_two: tuple[Repository, Path]) -> None:
    """A manifest (even with a valid checksum) cannot make a reader open another file."""
    repo, tmp = repo_with_two
    m = repo.generations("vm1")[0]
    outside = tmp / "elsewhere.idx"
    outside.write_bytes((repo.root / m.disks[0].index).read_bytes())
    m.disks[0].index = "../elsewhere.idx"
    repo.layout.manifest("vm1", m.id).write_bytes(m.encode())  # re-sealed: checksum is fine
    again = repo.generation("vm1", m.id)
    with pytest.raises(IntegrityError, match=r"the manifest names it at '\.\./elsewhere\.idx'"):
        repo.load_index(again, "disk-0")
