"""A repository config, a manifest or an index of a format version this HyperSDK does not
know (a newer one) is refused, never guessed at: through the library an IntegrityError
naming the file and the version, through hyperctl one line and exit code 1, no traceback.
Each file is otherwise intact (checksums recomputed), so only the version can refuse it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hypersdk.errors import IntegrityError
from hypersdk.repository import index as index_format
from hypersdk.repository.manifest import checksum
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export
from tests.repository.test_damage import hyperctl

NEWER = 9


class Made:
    def __init__(self, repo: Repository, gen: str, tmp: Path) -> None:
        self.repo, self.gen, self.tmp = repo, gen, tmp

    @property
    def manifest(self) -> Path:
        return self.repo.layout.manifest("vm1", self.gen)

    def rewrite_manifest(self, change: Callable[[dict[str, object]], None]) -> None:
        doc = json.loads(self.manifest.read_text())
        change(doc)
        doc.pop("checksum", None)
        doc["checksum"] = checksum(doc)
        self.manifest.write_text(json.dumps(doc))


@pytest.fixture()
def made(tmp_path: Path) -> Made:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4 * BS))
    return Made(repo, export(repo, {"disk-0": image}, name="vm1").manifest.id, tmp_path)


def _one_line(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hyperctl: error: ")
    for part in parts:
        assert part in proc.stderr, proc.stderr


def _restore(made: Made) -> subprocess.CompletedProcess[str]:
    out = made.tmp / "out.raw"
    return hyperctl("restore", "--output", str(made.repo.root), "--vm", "vm1",
                    "--generation", made.gen, "--to", str(out))  # fmt: skip


def test_a_newer_repository_config_is_refused(made: Made) -> None:
    config = made.repo.layout.config
    doc = json.loads(config.read_text())
    doc["version"] = NEWER
    config.write_text(json.dumps(doc))
    expected = f"{config}: unsupported repository version {NEWER}"
    with pytest.raises(IntegrityError) as err:
        Repository.open(made.repo.root)
    assert str(err.value) == expected
    with pytest.raises(IntegrityError, match="unsupported repository version"):
        Repository.open_or_init(made.repo.root)  # never re-initialised over it
    for args in (
        ("generations", "--output", str(made.repo.root)),
        ("verify", "--output", str(made.repo.root)),
    ):
        _one_line(hyperctl(*args), expected)
    _one_line(_restore(made), expected)
    assert json.loads(config.read_text())["version"] == NEWER  # nobody "upgraded" it


def test_a_newer_manifest_is_refused(made: Made) -> None:
    made.rewrite_manifest(lambda doc: doc.update(version=NEWER))
    where = made.repo.layout.relative(made.manifest)
    problem = f"{where}: unsupported manifest version {NEWER}"
    with pytest.raises(IntegrityError) as err:
        made.repo.generation("vm1", made.gen)
    assert str(err.value) == f"generation {made.gen} of VM 'vm1' is damaged: {problem}"
    assert [b.problem for b in made.repo.damaged("vm1")] == [problem]
    _one_line(_restore(made), problem)
    proc = hyperctl("verify", "--output", str(made.repo.root))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert problem in proc.stdout + proc.stderr


def test_a_newer_index_is_refused(made: Made) -> None:
    manifest = made.repo.generation("vm1", made.gen)
    relative = manifest.disks[0].index
    path = made.repo.root / relative
    blob = bytearray(path.read_bytes())
    assert blob[4] == index_format.VERSION
    blob[4] = NEWER
    blob[-32:] = hashlib.sha256(blob[:-32]).digest()
    path.write_bytes(bytes(blob))

    def new_sha(doc: dict[str, object]) -> None:
        disks = doc["disks"]
        assert isinstance(disks, list)
        disks[0]["index_sha256"] = hashlib.sha256(blob).hexdigest()

    made.rewrite_manifest(new_sha)  # the manifest vouches for the new index
    manifest = made.repo.generation("vm1", made.gen)
    expected = f"unsupported index version {NEWER}"
    with pytest.raises(IntegrityError) as err:
        made.repo.load_index(manifest, "disk-0")
    assert str(err.value).endswith(f": {expected}")
    assert relative in str(err.value)  # the file is named
    with pytest.raises(IntegrityError, match=expected):
        restore_disk(made.repo, manifest, "disk-0", made.tmp / "lib.raw")
    assert not (made.tmp / "lib.raw").exists()
    _one_line(_restore(made), relative, expected)
    proc = hyperctl("verify", "--output", str(made.repo.root))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert expected in proc.stdout + proc.stderr
