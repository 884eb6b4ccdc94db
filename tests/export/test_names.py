"""The `--vm` given to hyperexport names the VM in every hyperctl command, as do the VM
id and the VM's name: a running qemu-storage-daemon and an offline qcow2 image."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.cli.names import check_every_command, check_unknown
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2


def test_qemu_locator_id_and_name(
    cli: Cli, qsd: QemuStorageDaemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    qsd.write(0, random.Random(1).randbytes(MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    first = cli.export(qsd.locator)
    qsd.write(2 * MiB, random.Random(2).randbytes(100_000))
    cli.export(qsd.locator, "--incremental")
    qsd.flush()
    latest = qsd.read(0, qsd.size)

    socket = str(qsd.qmp_path)
    sloppy = "qemu:" + socket.replace("/qsd/", "/qsd/./", 1)  # another spelling, no ?nbd=
    assert sloppy != qsd.locator
    names = [qsd.locator, f"qemu:{socket}", sloppy, first["vm"], first["vm_name"]]
    check_every_command(
        capsys, cli.repo, names, vm_id=first["vm"], disk="disk0", latest=latest, tmp=tmp_path
    )
    gens = json.loads(
        cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json").stdout
    )
    assert gens[-1]["locator"] == f"qemu:{socket}"  # recorded canonical, options left out
    check_unknown(capsys, cli.repo, f"qemu:{tmp_path / 'other.sock'}")


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def test_qcow2_locator_id_and_name(
    cli: Cli, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "images" / "web1.qcow2"
    image.parent.mkdir()
    create_qcow2(image, 4 * MiB)
    qemu_io(image, "write -P 0x5a 0 1M")
    locator = f"qcow2:{image}"
    assert cli.run("hyperexport", "--vm", locator, "--enable-cbt").returncode == 0
    first = cli.export(locator)
    qemu_io(image, "write -P 0x6b 3M 64k")
    cli.export(f"qcow2:{tmp_path}/images/../images/web1.qcow2", "--incremental")
    raw = tmp_path / "reference.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw], check=True)

    assert first["vm_name"] == "web1"
    names = [
        locator,
        f"qcow2:{tmp_path}/images//./web1.qcow2",
        "qcow2:images/web1.qcow2",  # relative to the current folder
        first["vm"],
        "web1",
    ]
    check_every_command(
        capsys, cli.repo, names, vm_id=first["vm"], disk="web1", latest=raw.read_bytes(),
        tmp=tmp_path,
    )  # fmt: skip
    check_unknown(capsys, cli.repo, f"qcow2:{tmp_path / 'images' / 'other.qcow2'}")
    check_unknown(capsys, cli.repo, "web2")


def test_missing_image_or_socket_is_not_found(cli: Cli, tmp_path: Path) -> None:
    """What the user typed names nothing: exit 2 (not 1 "export failed"), one line."""
    for locator in (f"qcow2:{tmp_path / 'gone.qcow2'}", f"qemu:{tmp_path / 'gone.sock'}"):
        proc = cli.run("hyperexport", "--vm", locator, "--output", str(cli.repo), "--json")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["code"] == "not_found"
        assert "does not exist" in json.loads(proc.stdout)["error"]
