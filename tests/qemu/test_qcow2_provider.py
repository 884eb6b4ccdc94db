"""The QEMU provider on an offline qcow2 image (qemu-img bitmap + qemu-nbd)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hypersdk.errors import CbtUnavailable, ChangeIdInvalid, ConflictError
from hypersdk.nbd import NbdPool
from hypersdk.providers.base import Provider
from hypersdk.providers.qemu import Qcow2Provider, open_qemu_provider
from tests.qemu.helpers import assert_contiguous, image_bytes, materialize, ranges
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2

K64 = 64 * 1024


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def bitmap_names(image: Path) -> set[str]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    import json

    data = json.loads(out)["format-specific"]["data"]
    return {b["name"] for b in data.get("bitmaps", [])}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "vm1.qcow2"
    create_qcow2(path, 8 * MiB)
    qemu_io(path, "write -P 0x5a 0 1M")
    qemu_io(path, "write -P 0x6b 6M 64k")
    return path


def test_offline_full_then_incremental(image: Path, tmp_path: Path) -> None:
    p = open_qemu_provider(f"qcow2:{image}")
    assert isinstance(p, Qcow2Provider)
    as_provider: Provider = p  # structurally a Provider (checked by mypy)
    assert as_provider.identity().vm_id.startswith("qcow2-")
    assert not p.cbt_status().enabled
    p.enable_cbt()
    status = p.cbt_status()
    assert status.enabled and status.disks[0].key == "vm1"

    expected = image_bytes(image, tmp_path)
    with p.open_backup(None) as session:
        (disk,) = session.disks
        assert disk.changed is not None
        assert_contiguous(disk.changed, 8 * MiB)
        # qemu-nbd --read-only allows multi-conn: the engine's threads get a socket each
        assert isinstance(disk.reader, NbdPool) and disk.reader.connections == 4
        assert materialize(disk) == expected
        first = disk.change_id
    p.backup_committed({"vm1": first})
    assert {b for b in bitmap_names(image) if b.startswith("hypersdk-")} == {first}

    qemu_io(image, "write -P 0x7c 2M 64k")
    qemu_io(image, "write -z 0 128k")
    after = image_bytes(image, tmp_path)
    estimate = p.estimate_changes({"vm1": first})
    assert estimate.per_disk == {"vm1": 3 * K64}
    with p.open_backup({"vm1": first}) as session:
        (disk,) = session.disks
        assert disk.changed is not None
        assert ranges(disk.changed, zero=False) == [(2 * MiB, 2 * MiB + K64)]
        assert ranges(disk.changed, zero=True) == [(0, 2 * K64)]
        assert materialize(disk, expected) == after
        second = disk.change_id
    p.backup_committed({"vm1": second})
    assert {b for b in bitmap_names(image) if b.startswith("hypersdk-")} == {second}
    p.disable_cbt()
    assert not any(b.startswith("hypersdk-") for b in bitmap_names(image))


def test_offline_failed_session_drops_new_checkpoint(image: Path) -> None:
    p = open_qemu_provider(f"qcow2:{image}")
    p.enable_cbt()
    first = p.cbt_status().disks[0].change_id
    with pytest.raises(RuntimeError), p.open_backup({"vm1": first}) as session:
        tmpdir = Path(session.tmpdir)
        raise RuntimeError("boom")
    assert not tmpdir.exists()
    assert bitmap_names(image) == {first}
    assert p.check_change_id("vm1", first).valid
    with pytest.raises(ChangeIdInvalid):
        p.open_backup({"vm1": "hypersdk-gone"})


def test_image_in_use_is_refused(tmp_path: Path) -> None:
    with QemuStorageDaemon(tmp_path / "qsd", size=4 * MiB) as qsd:
        p = open_qemu_provider(f"qcow2:{qsd.disk_path}")
        with pytest.raises(ConflictError):
            p.enable_cbt()


def test_raw_image_cannot_track(tmp_path: Path) -> None:
    raw = tmp_path / "plain.img"
    raw.write_bytes(bytes(MiB))
    p = open_qemu_provider(f"qcow2:{raw}")
    status = p.cbt_status()
    assert not status.enabled and not status.disks[0].cbt_supported
    with pytest.raises(CbtUnavailable):
        p.enable_cbt()
