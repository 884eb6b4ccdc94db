"""Private by default: a repository and restored images are owner-only, whatever the
umask (issue 8, item 3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hypersdk.access.image import restore_image
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


@pytest.mark.usefixtures("umask_022")
def test_repository_and_restored_images_are_private(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "deep" / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(3 * BS) + bytes(BS))
    first = export(repo, {"disk-0": img})
    export(repo, {"disk-0": img}, parent=first.manifest, changed={"disk-0": []})

    modes = _modes(repo.root)
    assert {"config", "locks/repository.lock", "locks/vm-vm1.lock"} <= set(modes)
    assert any(name.startswith("data/") and len(name) == 72 for name in modes)
    assert any(name.endswith(".idx") for name in modes)
    assert any(name.endswith(".json") for name in modes)
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (repo.root / name).is_dir() else 0o600)
    }
    assert wrong == {}
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o700  # made for the repo

    for fmt in ("raw", "qcow2", "vmdk"):
        out = tmp_path / f"restored.{fmt}"
        restore_image(repo, first.manifest, "disk-0", out, fmt=fmt)
        assert stat.S_IMODE(out.stat().st_mode) == 0o600, fmt
    # also when an existing (readable) file is overwritten
    out = tmp_path / "restored.raw"
    out.chmod(0o644)
    restore_disk(repo, first.manifest, "disk-0", out, force=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
