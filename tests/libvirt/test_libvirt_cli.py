"""hyperexport on a libvirt domain, end to end: --connect, full then incremental into a
repository, --incremental-info with exact counts from the checkpoint, and a checkpoint
deleted behind our back giving a full export with its reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hypersdk.cli.hyperexport import main
from tests.libvirt.rig import DISK_XML, Domain, Libvirtd, domain
from tests.libvirt.test_libvirt_provider import _fresh


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code = main([*argv, "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_hyperexport_connect_full_incremental_and_lost_checkpoint(
    shared_domain: Domain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dom = _fresh(shared_domain, running=True)
    vm = ["--vm", f"libvirt:{dom.name}", "--connect", dom.daemon.uri]
    repo = str(tmp_path / "repo")
    _run(capsys, *vm, "--enable-cbt")
    dom.io("write -P 0x51 0 1M")
    first = _run(capsys, *vm, "--output", repo, "--incremental")
    assert "does not exist" not in json.dumps(first)

    dom.io("write -P 0x52 2M 64k")
    info = _run(capsys, *vm, "--output", repo, "--incremental-info")
    assert info["can_incremental"] is True, info["reason"]
    assert info["estimate_exact"] is True
    assert info["estimated_changed_bytes"] == 64 * 1024
    assert str(info["vm_path"]).startswith(f"libvirt:{dom.name}?connect=")

    second = _run(capsys, *vm, "--output", repo, "--incremental")
    assert "incremental" in json.dumps(second)

    for cp in dom.dom.listAllCheckpoints(0):
        cp.delete(0)  # behind our back
    info = _run(capsys, *vm, "--output", repo, "--incremental-info")
    assert info["can_incremental"] is False
    assert "no usable libvirt checkpoint on vda" in str(info["reason"])
    _run(capsys, *vm, "--enable-cbt")  # tracking again, but not since the last export
    info = _run(capsys, *vm, "--output", repo, "--incremental-info")
    assert info["can_incremental"] is False
    assert "does not exist" in str(info["reason"])
    third = _run(capsys, *vm, "--output", repo, "--incremental")
    assert "does not exist" in json.dumps(third)


def test_connect_refused_for_other_locators(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--vm", "qcow2:/x.qcow2", "--connect", "qemu:///system", "--enable-cbt"])
    assert code != 0
    assert "--connect is for a libvirt domain" in capsys.readouterr().err


def test_resized_disk_gives_a_full_export_with_its_reason(
    libvirtd: Libvirtd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with domain(libvirtd) as dom:  # its own: the resize stays with the domain
        dom.start()
        vm = ["--vm", dom.locator]
        repo = str(tmp_path / "repo")
        _run(capsys, *vm, "--enable-cbt")
        _run(capsys, *vm, "--output", repo, "--incremental")
        size = dom.dom.blockInfo("vda")[0]
        grown = size + 4 * 1024 * 1024
        dom.dom.blockResize("vda", grown, 1)  # flag 1: the size is in bytes
        info = _run(capsys, *vm, "--output", repo, "--incremental-info")
        assert info["can_incremental"] is False
        assert f"{size} -> {grown} bytes" in str(info["reason"])
        report = _run(capsys, *vm, "--output", repo, "--incremental")
        assert f"{size} -> {grown} bytes" in json.dumps(report)


def test_added_disk_gives_a_full_export_with_its_reason(
    libvirtd: Libvirtd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import libvirt

    with domain(libvirtd) as dom:
        dom.start()
        vm = ["--vm", dom.locator]
        repo = str(tmp_path / "repo")
        _run(capsys, *vm, "--enable-cbt")
        _run(capsys, *vm, "--output", repo, "--incremental")
        extra = dom.folder / "vdb.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(extra), "4M"], check=True)
        xml = DISK_XML.format(path=extra, dev="vdb")
        dom.stop()  # the test domain has no ACPI: no PCI hotplug
        dom.dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        dom.start()
        info = _run(capsys, *vm, "--output", repo, "--incremental-info")
        assert info["can_incremental"] is False
        assert "no usable libvirt checkpoint on vdb" in str(info["reason"])
        _run(capsys, *vm, "--enable-cbt")  # a checkpoint on both disks now
        report = _run(capsys, *vm, "--output", repo, "--incremental")
        assert "Disk topology changed since the last export (added vdb)" in json.dumps(report)
