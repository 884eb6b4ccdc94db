"""One resolver for VM names (hypersdk.engine.catalog), seen through hyperctl: the id,
any spelling of the locator, the name when it is unambiguous; else exit 2 naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hypersdk.cli.hyperctl import main as hyperctl_main
from hypersdk.engine.catalog import resolve_vm, vms
from hypersdk.errors import NotFoundError, UsageError
from hypersdk.providers.base import VmIdentity
from hypersdk.providers.factory import canonical_locator, derived_vm_id, export_key
from hypersdk.providers.qemu._provider import qcow2_vm_id
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from tests.cli.named_repo import export_as, named_repo


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    return named_repo(tmp_path)


@pytest.mark.parametrize(
    "name, vm_id",
    [
        ("uuid-w", "uuid-w"),
        ("/DC0/vm/web", "uuid-w"),
        ("DC0/vm/web", "uuid-w"),
        ("/DC0/vm/web/", "uuid-w"),
        ("web", "uuid-w"),
        ("vm-a", "vm-a"),  # an id wins over the shared name
        ("qcow2:{tmp}/img/solo.qcow2", "qcow2-0123"),
        ("qcow2:{tmp}/img/../img//solo.qcow2", "qcow2-0123"),
        ("solo", "qcow2-0123"),
    ],
)
def test_names_resolve(repo: Repository, tmp_path: Path, name: str, vm_id: str) -> None:
    assert resolve_vm(repo, name.format(tmp=tmp_path)) == vm_id


def test_ambiguous_name_lists_the_ids(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=r"'twin' names several VMs \(vm-a, vm-b\)"):
        resolve_vm(repo, "twin")
    assert hyperctl_main(["generations", "--output", str(repo.root), "--vm", "twin"]) == 2
    err = capsys.readouterr().err
    assert "vm-a, vm-b" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["nope", "/DC0/vm/db", "qcow2:/img/solo.qcow2", "twin2"])
def test_unknown_is_not_found_never_empty(
    repo: Repository, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    with pytest.raises(NotFoundError, match=f"no VM {name!r}"):
        resolve_vm(repo, name)
    capsys.readouterr()
    args = ["generations", "--output", str(repo.root), "--vm", name, "--json"]
    assert hyperctl_main(args) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["code"] == "not_found" and repr(name) in out["error"]


def test_listing_shows_the_recorded_locator(repo: Repository, tmp_path: Path) -> None:
    assert {v.id: v.locators for v in vms(repo)} == {
        "qcow2-0123": (f"qcow2:{tmp_path}/img/solo.qcow2",),
        "uuid-w": ("/DC0/vm/web",),  # recorded with its leading slash
        "vm-a": ("raw:a",),
        "vm-b": ("raw:b",),
    }
    web = repo.generations("uuid-w")[0]
    assert web.summary()["locator"] == "/DC0/vm/web"
    assert web.to_json()["vm"]["locator"] == "/DC0/vm/web"


def test_manifests_without_a_locator(repo: Repository, tmp_path: Path) -> None:
    """Written before locators were recorded: the same bytes as then (no key, so the
    checksum rules are unchanged), read back; a qcow2 image is still found by the id
    its path stands for."""
    image = tmp_path / "old" / "disk.qcow2"
    old = VmIdentity(qcow2_vm_id(str(image)), "disk", "qemu", "")
    raw = tmp_path / "old.raw"
    raw.write_bytes(os.urandom(4096))
    m = export_as(repo, old, raw)
    doc = m.to_json()
    assert set(doc["vm"]) == {"id", "name", "platform"}
    assert Manifest.decode(m.encode()).locator == ""
    assert m.summary()["locator"] is None
    assert resolve_vm(repo, f"qcow2:{tmp_path}/old/./disk.qcow2") == old.vm_id


def test_canonical_locators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert canonical_locator("DC0/vm/x") == canonical_locator("/DC0/vm/x/") == "/DC0/vm/x"
    assert canonical_locator("qcow2:/a/../a/d.qcow2") == "qcow2:/a/d.qcow2"
    assert canonical_locator("qcow2:d.qcow2") == f"qcow2:{tmp_path}/d.qcow2"
    assert canonical_locator("qemu:/run/q.sock?nbd=/run/n.sock") == "qemu:/run/q.sock"
    assert canonical_locator("qemu:///run/q.sock") == "qemu:/run/q.sock"
    assert canonical_locator("qemu://run/q.sock") == "qemu:/run/q.sock"
    with pytest.raises(UsageError):
        canonical_locator("  ")
    # what the daemon's one-export-per-VM check compares
    assert export_key("DC0/vm/x") == export_key("/DC0/vm/x")
    assert export_key("qcow2:/a/../a/d.qcow2") == export_key("qcow2:/a/d.qcow2")
    assert export_key("qcow2:/a/d.qcow2") == derived_vm_id("qcow2:/a/d.qcow2")
    link = tmp_path / "link.qcow2"
    link.symlink_to(tmp_path / "d.qcow2")
    assert export_key(f"qcow2:{link}") == export_key(f"qcow2:{tmp_path}/d.qcow2")
    assert derived_vm_id("/DC0/vm/x") is None and derived_vm_id("qemu:/q.sock") is None
