"""hyperexport on a libvirt domain, end to end: --connect, full then incremental into a
repository, --incremental-info with exact counts from the checkpoint, and a checkpoint
deleted behind our back giving a full export with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypersdk.cli.hyperexport import main
from tests.libvirt.rig import Domain
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
