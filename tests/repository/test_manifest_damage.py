"""One bad manifest is reported and isolated; it never blocks the others (issue 8).

Every shape a manifest file can take on disk: not JSON, JSON of the wrong shape, missing
fields, wrong field types, a flipped digit (the checksum), and a file whose name or folder
does not match the id inside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hypersdk.cli.hyperctl import main as hyperctl_main
from hypersdk.errors import IntegrityError, RepositoryError
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select_with_damage, verify
from tests.chain import BS, export, restored_bytes
from tests.repository.test_damage import hyperctl


def _doc(blob: bytes) -> dict:  # type: ignore[type-arg]
    doc: dict = json.loads(blob)  # type: ignore[type-arg]
    return doc


def _flip_digit(blob: bytes) -> bytes:
    doc = _doc(blob)
    doc["disks"][0]["capacity_bytes"] += 1  # the checksum field is left as it was
    return json.dumps(doc, indent=2).encode()


def _set(path: tuple[str | int, ...], value: object) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        doc = _doc(blob)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        doc.pop("checksum")  # shape problems must be found with or without a checksum
        doc["version"] = 1
        return json.dumps(doc).encode()

    return mutate


def _drop(key: str) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        doc = _doc(blob)
        doc.pop(key)
        doc.pop("checksum")
        doc["version"] = 1
        return json.dumps(doc).encode()

    return mutate


SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "not-json": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "list": lambda b: b"[1, 2, 3]",
    "string": lambda b: b'"a manifest"',
    "null": lambda b: b"null",
    "missing-disks": _drop("disks"),
    "missing-vm": _drop("vm"),
    "vm-is-a-list": _set(("vm",), ["vm1"]),
    "disks-is-a-string": _set(("disks",), "disk-0"),
    "disk-is-a-number": _set(("disks", 0), 7),
    "capacity-is-a-string": _set(("disks", 0, "capacity_bytes"), "lots"),
    "block-size-is-a-bool": _set(("block_size",), True),
    "id-is-a-number": _set(("id",), 20261130),
    "stats-is-a-list": _set(("stats",), [1]),
    "flipped-digit": _flip_digit,
}


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    """vm1 with three generations, vm2 with one."""
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "a.raw"
    img.write_bytes(os.urandom(4 * BS))
    prev = export(repo, {"disk-0": img}).manifest
    for _ in range(2):
        with open(img, "r+b") as f:
            f.write(os.urandom(BS))
        prev = export(repo, {"disk-0": img}, parent=prev).manifest
    b = tmp_path / "b.raw"
    b.write_bytes(os.urandom(2 * BS))
    export(repo, {"disk-0": b}, name="vm2")
    return repo


def _check_isolated(
    repo: Repository, bad_id: str, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    others = [m for m in repo.generations("vm1")]
    assert bad_id not in [m.id for m in others]
    assert len(others) == 2 and repo.vm_ids() == ["vm1", "vm2"]
    assert [b.generation for b in repo.damaged()] == [bad_id]

    # verify: exit 1, names the VM and the generation, and checks every other one
    capsys.readouterr()
    assert hyperctl_main(["verify", "--output", str(repo.root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(d["vm"], d["generation"], d["disk"]) for d in report["damage"]] == [
        ("vm1", bad_id, "")
    ]
    assert report["generations"] == 4 and report["chunks_checked"] > 0
    assert hyperctl_main(["verify", "--output", str(repo.root)]) == 1
    assert f"DAMAGED vm1 generation {bad_id} manifest" in capsys.readouterr().out
    assert (
        hyperctl_main(["verify", "--output", str(repo.root), "--vm", "vm1", "--generation", bad_id])
        == 1
    )
    assert bad_id in capsys.readouterr().out

    # restore and delete of that generation: one clear line naming it
    args = ["--output", str(repo.root), "--vm", "vm1", "--generation", bad_id]
    assert hyperctl_main(["restore", *args, "--to", str(tmp / "x.raw")]) == 1
    err = capsys.readouterr().err
    assert f"generation {bad_id} of VM 'vm1' is damaged" in err and len(err.splitlines()) == 1
    assert not (tmp / "x.raw").exists()
    assert hyperctl_main(["delete", *args]) == 1
    assert bad_id in capsys.readouterr().err
    with pytest.raises(IntegrityError, match=bad_id):
        repo.generation("vm1", bad_id)
    # gc cannot know what the damaged generation references: it removes nothing
    with pytest.raises(RepositoryError, match=f"gc refused.*{bad_id}"):
        collect_garbage(repo)

    # every other generation still restores
    for m in [*others, *repo.generations("vm2")]:
        assert restored_bytes(repo, m, "disk-0", tmp)
    out = tmp / "other.raw"
    ok = hyperctl_main(
        [
            "restore",
            "--output",
            str(repo.root),
            "--vm",
            "vm1",
            "--generation",
            others[0].id,
            "--to",
            str(out),
            "--quiet",
        ]
    )
    assert ok == 0 and out.stat().st_size == 4 * BS


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_bad_manifest_is_isolated(
    repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    middle = repo.generations("vm1")[1]
    path = repo.layout.manifest("vm1", middle.id)
    path.write_bytes(SHAPES[shape](path.read_bytes()))
    _check_isolated(repo, middle.id, tmp_path, capsys)


def test_a_manifest_under_another_name_is_refused(
    repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid manifest copied under another generation's name is not that generation."""
    gens = repo.generations("vm1")
    wrong = repo.layout.manifest("vm1", "20991231T235959-abcdef")
    wrong.write_bytes(repo.layout.manifest("vm1", gens[0].id).read_bytes())
    assert [m.id for m in repo.generations("vm1")] == [m.id for m in gens]
    bad = repo.damaged("vm1")
    assert len(bad) == 1 and "does not match its id" in bad[0].problem
    # it sorts last, so "latest" is ambiguous: refused rather than silently older
    with pytest.raises(IntegrityError, match="latest"):
        repo.generation("vm1", "latest")
    wrong.unlink()
    assert repo.generation("vm1", "latest").id == gens[-1].id


def test_a_manifest_in_another_vms_folder_is_refused(repo: Repository) -> None:
    m = repo.generations("vm2")[0]
    target = repo.layout.manifest("vm1", m.id)
    target.write_bytes(repo.layout.manifest("vm2", m.id).read_bytes())
    assert m.id not in [g.id for g in repo.generations("vm1")]
    manifests, damaged = select_with_damage(repo, None, None)
    assert [(b.vm, b.generation) for b in damaged] == [("vm1", m.id)]
    assert "another VM" in damaged[0].problem
    report = verify(repo, manifests, damaged=damaged)
    assert not report.ok and report.generations == 5


def test_generations_warns_and_lists_the_others(repo: Repository) -> None:
    middle = repo.generations("vm1")[1]
    repo.layout.manifest("vm1", middle.id).write_bytes(b"[]")
    proc = hyperctl("generations", "--output", str(repo.root), "--json")
    assert proc.returncode == 0, proc.stderr
    listed = [g["id"] for g in json.loads(proc.stdout)]
    assert len(listed) == 3 and middle.id not in listed
    assert f"warning: skipping generation {middle.id} of VM vm1" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = hyperctl(
        "restore",
        "--output",
        str(repo.root),
        "--vm",
        "vm1",
        "--generation",
        middle.id,
        "--to",
        str(repo.root.parent / "o.raw"),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"generation {middle.id} of VM 'vm1' is damaged: " in proc.stderr


def test_version_1_manifests_without_checksum_are_read(repo: Repository) -> None:
    m = repo.generations("vm1")[0]
    path = repo.layout.manifest("vm1", m.id)
    doc = _doc(path.read_bytes())
    doc.pop("checksum")
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    assert repo.generation("vm1", m.id) == m
    doc["version"] = 2  # version 2 requires the checksum
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="checksum"):
        Manifest.decode(path.read_bytes())
