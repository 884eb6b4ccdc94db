"""Restore into an existing disk through hypervisord and the Python SDK: the same
options as the CLI, confined to the daemon's allowed folders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hypersdk import ForbiddenError, HyperSDK, InvalidRequestError, NotFoundError
from hypersdk.access.image import restore_image
from tests.chain import BS
from tests.daemon.live import Hypervisord
from tests.qemu.helpers import image_bytes
from tests.restore.helpers import BLOCKS, make_pair
from tests.rigs.qsd import QemuStorageDaemon

TOKEN = "restore-into-token-0123456789"


def test_daemon_restores_into_a_file_and_a_qsd_disk(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    target = pair.restore(pair.f, allowed / "t.raw")
    image = allowed / "disk0.qcow2"
    restore_image(pair.repo, pair.f, "disk-0", image, fmt="qcow2")
    outside = pair.restore(pair.f, tmp_path / "outside.raw")
    with (
        Hypervisord(tmp_path / "hvd", output=pair.repo.root, allow=(allowed,), token=TOKEN) as hvd,
        QemuStorageDaemon(allowed / "qsd", image=image, nbd_server=False) as qsd,
        HyperSDK(hvd.base_url, token=TOKEN) as client,
    ):
        job = client.wait_for_export(client.restore("vm1", str(target), since=pair.f.id)["id"])
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["mode"] == "since" and result["since"] == pair.f.id
        assert result["bytes_written"] == len(pair.changed) * BS
        assert target.read_bytes() == pair.g_bytes

        job = client.wait_for_export(client.restore("vm1", str(target), compare=True)["id"])
        assert job["result"]["blocks_changed"] == 0
        assert job["result"]["bytes_read_target"] == BLOCKS * BS

        job = client.wait_for_export(client.restore("vm1", qsd.locator, since=pair.f.id)["id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["target_format"] == "qemu"
        assert job["result"]["blocks_changed"] == len(pair.changed)
        assert qsd.export_ids() == set()

        with pytest.raises(ForbiddenError):
            client.restore("vm1", str(outside), since=pair.f.id)
        with pytest.raises(InvalidRequestError, match="exclude"):
            client.restore("vm1", str(target), since=pair.f.id, compare=True)
        with pytest.raises(NotFoundError, match="does not exist"):
            client.restore("vm1", str(allowed / "missing.raw"), compare=True)
        # a qcow2 target's backing chain is opened too: every file of it must be allowed
        base = tmp_path / "base.qcow2"
        restore_image(pair.repo, pair.f, "disk-0", base, fmt="qcow2")
        overlay = allowed / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
             str(overlay)],
            check=True,
        )  # fmt: skip
        with pytest.raises(ForbiddenError, match="outside"):
            client.restore("vm1", str(overlay), since=pair.f.id)
        small = allowed / "small.raw"
        small.write_bytes(bytes(BS))
        with pytest.raises(InvalidRequestError, match="does not hold"):
            client.restore("vm1", str(small), since=pair.f.id)
        with pytest.raises(InvalidRequestError):  # a qemu: target needs since/compare
            client.restore("vm1", qsd.locator)
    assert outside.read_bytes() == pair.f_bytes
    assert image_bytes(image, tmp_path) == pair.g_bytes
    assert not (allowed / "missing.raw").exists()
