"""Restore into a qcow2 file (through qemu-nbd), a qemu-storage-daemon disk and a paused
qemu-system-x86_64 disk (through a writable NBD export of the disk), and the refusal of a
running guest. Sentinels planted in the blocks F and G agree on must survive: only the
changed blocks are written."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from hypersdk.access.image import restore_image
from hypersdk.engine.restore_into import prepare_into, run_into
from hypersdk.errors import ConflictError, ExportCancelled, UsageError
from hypersdk.repository.restore_into import IntoResult
from tests.chain import BS
from tests.qemu.helpers import image_bytes
from tests.restore.helpers import BLOCKS, Pair, make_pair
from tests.rigs.qsd import QemuStorageDaemon, QemuVm, have

pytestmark = pytest.mark.skipif(
    not (have("qemu-img") and have("qemu-nbd") and have("qemu-storage-daemon")),
    reason="needs qemu-utils and qemu-system-common",
)

SENTINEL = 0x5A
UNCHANGED = (0, 1, 2, 5, 47)  # blocks that differ in neither F nor G (see make_pair)


def _qcow2_of(pair: Pair, path: Path) -> Path:
    restore_image(pair.repo, pair.f, "disk-0", path, fmt="qcow2")
    return path


def _into(pair: Pair, to: str, since: str | None = None, compare: bool = False) -> IntoResult:
    job = prepare_into(pair.repo.root, "vm1", pair.g.id, None, to, since=since, compare=compare)
    return run_into(job, parallel=3)


def _plant(pair: Pair, blocks: tuple[int, ...], write: object) -> bytes:
    """Plant a sentinel in ``blocks`` with ``write(offset, data)``; returns G with those
    blocks as they must read afterwards (untouched: still the sentinel)."""
    expected = bytearray(pair.g_bytes)
    for b in blocks:
        assert b not in pair.changed
        write(b * BS, bytes([SENTINEL]) * BS)  # type: ignore[operator]
        expected[b * BS : (b + 1) * BS] = bytes([SENTINEL]) * BS
    return bytes(expected)


def _qemu_io_write(image: Path) -> object:
    def write(offset: int, data: bytes) -> None:
        cmd = f"write -P {data[0]} {offset} {len(data)}"
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(image)], check=True,
                       capture_output=True)  # fmt: skip

    return write


def test_since_into_a_qcow2_file(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    image = _qcow2_of(pair, tmp_path / "target.qcow2")
    expected = _plant(pair, UNCHANGED, _qemu_io_write(image))

    result = _into(pair, str(image), since=pair.f.id)

    assert image_bytes(image, tmp_path) == expected
    assert result.target_format == "qcow2"
    assert result.blocks_changed == len(pair.changed)
    assert result.bytes_written == len(pair.changed) * BS
    # still a qcow2 file, and without sentinels it is G exactly
    info = subprocess.run(["qemu-img", "info", str(image)], capture_output=True, text=True)
    assert "file format: qcow2" in info.stdout
    clean = _qcow2_of(pair, tmp_path / "clean.qcow2")
    _into(pair, str(clean), since=pair.f.id)
    assert image_bytes(clean, tmp_path) == pair.g_bytes


def test_compare_into_a_damaged_qcow2_file(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    image = tmp_path / "target.qcow2"
    restore_image(pair.repo, pair.g, "disk-0", image, fmt="qcow2")
    write = _qemu_io_write(image)
    for b in (6, 30):
        write(b * BS + 4096, bytes([0x77]) * 4096)  # type: ignore[operator]

    result = _into(pair, str(image), compare=True)

    assert image_bytes(image, tmp_path) == pair.g_bytes
    assert result.blocks_changed == 2 and result.bytes_written == 2 * BS
    assert result.bytes_read_target == BLOCKS * BS


@pytest.mark.parametrize("own_server", [True, False], ids=["qsd-nbd-server", "our-nbd-server"])
def test_since_into_a_qsd_disk(tmp_path: Path, own_server: bool) -> None:
    pair = make_pair(tmp_path)
    image = _qcow2_of(pair, tmp_path / "disk0.qcow2")
    with QemuStorageDaemon(tmp_path / "qsd", image=image, nbd_server=own_server) as qsd:
        exports = qsd.export_ids()
        if own_server:
            expected = _plant(pair, UNCHANGED, qsd.write)
            qsd.flush()
        else:
            expected = pair.g_bytes

        result = _into(pair, qsd.locator, since=pair.f.id)

        assert result.target_format == "qemu"
        assert result.blocks_changed == len(pair.changed)
        assert result.bytes_written == len(pair.changed) * BS
        assert qsd.export_ids() == exports  # our export is gone
        if own_server:
            assert qsd.read(0, BLOCKS * BS) == expected
        else:
            # the NBD server we started is stopped: starting one again works
            qsd.qmp(
                "nbd-server-start", addr={"type": "unix", "data": {"path": str(tmp_path / "n")}}
            )
    assert image_bytes(image, tmp_path) == expected


class _SharedVm(QemuVm):
    """A VM whose disk device shares writes (share-rw=on): what a restore into a paused
    guest's disk needs."""

    def _argv(self) -> list[str]:
        argv = super()._argv()
        i = argv.index("-device") + 1
        argv[i] += ",share-rw=on"
        return argv


def test_running_guest_is_refused_paused_guest_is_restored(tmp_path: Path) -> None:
    if not have("qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    pair = make_pair(tmp_path)
    workdir = tmp_path / "vm"
    workdir.mkdir()
    image = _qcow2_of(pair, workdir / "disk0.qcow2")
    with _SharedVm(workdir, size=BLOCKS * BS) as vm:
        exports = vm.export_ids()
        assert vm.qmp("query-status")["running"]
        with pytest.raises(ConflictError, match="is running"):
            _into(pair, vm.locator, since=pair.f.id)
        assert vm.export_ids() == exports
        vm.qmp("stop")
        result = _into(pair, vm.locator, since=pair.f.id)
        assert result.bytes_written == len(pair.changed) * BS
        assert vm.export_ids() == exports
        assert vm.qmp("query-status")["status"] == "paused"
        assert image_bytes(image, tmp_path) == pair.g_bytes


def test_paused_guest_without_shared_writes_is_refused_clearly(tmp_path: Path) -> None:
    if not have("qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    pair = make_pair(tmp_path)
    workdir = tmp_path / "vm"
    workdir.mkdir()
    image = _qcow2_of(pair, workdir / "disk0.qcow2")
    with QemuVm(workdir, size=BLOCKS * BS) as vm:
        vm.qmp("stop")
        exports = vm.export_ids()
        with pytest.raises(ConflictError, match="share-rw"):
            _into(pair, vm.locator, since=pair.f.id)
        assert vm.export_ids() == exports
    assert image_bytes(image, tmp_path) == pair.f_bytes


def test_qcow2_in_use_by_a_vm_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    image = _qcow2_of(pair, tmp_path / "disk0.qcow2")
    with QemuStorageDaemon(tmp_path / "qsd", image=image, nbd_server=False) as qsd:
        # its QMP socket answers before its disk is open: wait until it holds the image
        assert "disk0" in qsd.node_names()
        with pytest.raises(ConflictError, match="in use"):
            _into(pair, str(image), since=pair.f.id)


def test_ctrl_c_and_cancel_remove_the_export(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    image = _qcow2_of(pair, tmp_path / "disk0.qcow2")
    with QemuStorageDaemon(tmp_path / "qsd", image=image, nbd_server=False) as qsd:
        job = prepare_into(
            pair.repo.root, "vm1", pair.g.id, None, qsd.locator, since=pair.f.id, compare=False
        )

        def interrupt(_: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_into(job, parallel=1, progress=interrupt)
        assert qsd.export_ids() == set()
        cancel = threading.Event()
        with pytest.raises(ExportCancelled):
            run_into(job, parallel=1, progress=lambda _: cancel.set(), cancel=cancel)
        assert qsd.export_ids() == set()
        # the NBD server this restore started is gone too: a new one can start
        qsd.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(tmp_path / "n")}})
        qsd.qmp("nbd-server-stop")
        # and the interrupted target is repaired by running the restore again
        assert run_into(job).blocks_changed == len(pair.changed)
    assert image_bytes(image, tmp_path) == pair.g_bytes


def test_a_raw_disk_that_looks_like_qcow2_is_not_guessed(tmp_path: Path) -> None:
    """A guest that writes a qcow2 header at the start of its raw disk must not make the
    restore open that disk as qcow2 (with the guest's metadata): the format is asked."""
    pair = make_pair(tmp_path)
    forged = tmp_path / "forged.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(forged), "1M"], check=True)
    head = forged.read_bytes()[:BS]
    f_data = head + pair.f_bytes[BS:]
    g_data = head + pair.g_bytes[BS:]
    repo_pair = make_pair(tmp_path / "forged", raw=(f_data, g_data))
    target = repo_pair.restore(repo_pair.f, tmp_path / "guest.raw")
    with pytest.raises(UsageError, match="--format raw or --format qcow2"):
        _into(repo_pair, str(target), since=repo_pair.f.id)
    job = prepare_into(
        repo_pair.repo.root, "vm1", repo_pair.g.id, None, str(target),
        since=repo_pair.f.id, compare=False, fmt="raw",
    )  # fmt: skip
    run_into(job)
    assert target.read_bytes() == g_data


def test_a_vmdk_target_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    vmdk = tmp_path / "t.vmdk"
    restore_image(pair.repo, pair.f, "disk-0", vmdk, fmt="vmdk")
    before = vmdk.read_bytes()
    with pytest.raises(UsageError, match="is a vmdk image"):
        _into(pair, str(vmdk), since=pair.f.id)
    assert vmdk.read_bytes() == before
