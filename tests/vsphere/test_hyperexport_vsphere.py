"""hyperexport end to end against the vSphere lab, as a user runs it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from hypersdk.lab import VcsimLab
from tests.vsphere.conftest import PASSWORD, Cli, KiB, MiB, flat

BS = 64 * KiB  # the lab's tracking granularity, and the repositories' block size here
WEB = "/DC0/vm/web"


def fill(lab: VcsimLab, path: str, rng: random.Random, mib: int) -> None:
    """Guest data in the first ``mib`` MiB: random and repeating halves."""
    for i in range(mib):
        block = rng.randbytes(MiB // 2) + bytes(range(256)) * (MiB // 512)
        lab.write(path, i * MiB, block)


def change(lab: VcsimLab, path: str, rng: random.Random, capacity: int, pct: int) -> set[int]:
    """Rewrite pct % of the disk's 64 KiB blocks (one of them with zeros); the blocks."""
    nblocks = capacity // BS
    blocks = set(rng.sample(range(nblocks), nblocks * pct // 100))
    for i, b in enumerate(sorted(blocks)):
        if i == 0:
            lab.write(path, b * BS, length=BS, zero=True)
        else:
            lab.write(path, b * BS + 512, length=4096, seed=b)
    return blocks


@pytest.mark.parametrize("max_areas", [0, 1])
def test_full_then_incremental_reads_only_changed_and_restores(
    cli: Cli, lab: VcsimLab, max_areas: int
) -> None:
    rng = random.Random(5)
    lab.config(max_changed_areas=max_areas)
    capacity = 64 * MiB
    fill(lab, WEB, rng, 24)
    proc = cli.run("hyperexport", "--vm", WEB, "--enable-cbt")
    assert proc.returncode == 0, proc.stderr
    assert "CBT enabled successfully" in proc.stdout

    full = cli.export(WEB, "--incremental")
    assert full["mode"] == "full"
    assert full["reason"] == "No previous export: this export is the baseline"
    assert full["bytes_read"] == 24 * MiB  # only the allocated areas are read
    assert full["disks"][0]["key"] == "disk-2000"
    expected = {full["generation"]: flat(lab, WEB)}

    changed = change(lab, WEB, rng, capacity, 5)
    info = json.loads(cli.run("hyperexport", "--vm", WEB, "--incremental-info", "--json").stdout)
    assert info["can_incremental"] is True, info

    inc = cli.export(WEB, "--incremental")
    assert inc["mode"] == "incremental", inc["reason"]
    assert inc["bytes_read"] == len(changed) * BS  # exactly the changed blocks
    assert inc["disks"][0]["change_id"] != full["disks"][0]["change_id"]
    expected[inc["generation"]] = flat(lab, WEB)

    for gen, data in expected.items():
        assert cli.restore(full["vm"], gen, "disk-2000") == data
    assert lab.vm(WEB).snapshots == 0
    history = json.loads(
        (cli.tmp / "state" / "incremental" / full["vm"] / "latest.json").read_text()
    )
    assert history["disk_change_ids"] == {"disk-2000": inc["disks"][0]["change_id"]}
    assert history["disks"][0]["path"] == "[LocalDS_0] web/web.vmdk"
    assert history["disks"][0]["backing_info"] == "FlatVer2"


def test_vm_without_cbt_is_exported_full_with_the_reason(cli: Cli, lab: VcsimLab) -> None:
    data = lab.write("/DC0/vm/small", 3 * MiB, length=100_000, seed=3)
    doc = cli.export("DC0/vm/small", "--incremental")  # no leading slash
    assert doc["mode"] == "full"
    assert doc["reason"] == "Changed block tracking (CBT) is not enabled on this VM"
    assert doc["disks"][0]["change_id"] == ""
    restored = cli.restore(doc["vm"], doc["generation"], "disk-2000")
    assert restored == flat(lab, "/DC0/vm/small")
    assert restored[3 * MiB : 3 * MiB + len(data)] == data


def test_cbt_reset_gives_full_with_the_reason(cli: Cli, lab: VcsimLab) -> None:
    path = "/DC0/vm/small"
    lab.write(path, 0, length=MiB, seed=1)
    assert cli.run("hyperexport", "--vm", path, "--enable-cbt").returncode == 0
    cli.export(path, "--incremental")
    lab.reset_cbt(path)
    lab.write(path, 2 * MiB, length=BS, seed=2)
    doc = cli.export(path, "--incremental")
    assert doc["mode"] == "full"
    assert doc["reason"].startswith("CBT was reset on disk-2000 (change id uuid differs): ")
    assert cli.restore(doc["vm"], doc["generation"], "disk-2000") == flat(lab, path)
    # and the chain goes on from the new baseline
    lab.write(path, 5 * MiB, length=BS, seed=3)
    again = cli.export(path, "--incremental")
    assert again["mode"] == "incremental" and again["bytes_read"] == BS


def test_expired_change_id_falls_back_to_full(cli: Cli, lab: VcsimLab) -> None:
    """Same tracking uuid, but vSphere no longer knows the old sequence: FileFault from
    QueryChangedDiskAreas -> ChangeIdInvalid -> the engine exports full instead."""
    path = "/DC0/vm/small"
    lab.config(max_epochs=2)  # the lab keeps the two newest change ids per disk
    assert cli.run("hyperexport", "--vm", path, "--enable-cbt").returncode == 0
    cli.export(path, "--incremental")
    lab.write(path, MiB, length=BS, seed=9)
    for _ in range(2):  # each estimate takes a short-lived snapshot: a new change id
        info = cli.run("hyperexport", "--vm", path, "--incremental-info", "--json")
        assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["can_incremental"] is True  # same uuid: looks fine
    doc = cli.export(path, "--incremental")
    assert doc["mode"] == "full", doc
    assert doc["reason"].startswith("Previous change id was rejected (disk disk-2000: ")
    assert "FileFault" in doc["reason"]
    assert lab.vm(path).snapshots == 0
    assert cli.restore(doc["vm"], doc["generation"], "disk-2000") == flat(lab, path)


def _reconfigure(lab: VcsimLab, path: str, *changes: object) -> None:
    from pyVim.connect import Disconnect, SmartConnect

    s = lab.settings()
    si = SmartConnect(  # type: ignore[no-untyped-call]
        host=s.host, port=s.port, user=s.username, pwd=s.password, disableSslCertValidation=True
    )
    try:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(path.strip("/"))
        specs = []
        for c in changes:
            disks = [
                d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
            ]
            if c == "grow":
                disks[0].capacityInBytes += 4 * MiB
                disks[0].capacityInKB += 4 * 1024
                specs.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=disks[0]))  # type: ignore[no-untyped-call]
            elif c == "add":
                new = vim.vm.device.VirtualDisk(  # type: ignore[no-untyped-call]
                    key=-1, controllerKey=disks[0].controllerKey, unitNumber=7,
                    capacityInKB=4096, capacityInBytes=4 * MiB,
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(  # type: ignore[no-untyped-call]
                        diskMode="persistent", thinProvisioned=True, fileName=""
                    ),
                )  # fmt: skip
                specs.append(
                    vim.vm.device.VirtualDeviceSpec(  # type: ignore[no-untyped-call]
                        operation="add", fileOperation="create", device=new
                    )
                )
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=specs)))  # type: ignore[no-untyped-call]
    finally:
        Disconnect(si)  # type: ignore[no-untyped-call]


def test_resized_disk_and_added_disk_give_full(cli: Cli, lab: VcsimLab) -> None:
    path = "/DC0/vm/two-disks"
    lab.write(path, 0, length=MiB, seed=1)
    assert cli.run("hyperexport", "--vm", path, "--enable-cbt").returncode == 0
    first = cli.export(path, "--incremental")
    assert [d["key"] for d in first["disks"]] == ["disk-2000", "disk-2001"]

    _reconfigure(lab, path, "grow")
    grown = cli.export(path, "--incremental")
    assert grown["mode"] == "full"
    assert grown["reason"].startswith("Disk disk-2000 was resized since the last export")
    assert grown["disks"][0]["capacity_bytes"] == 20 * MiB

    _reconfigure(lab, path, "add")
    added = cli.export(path, "--incremental")
    assert added["mode"] == "full"
    assert added["reason"].startswith("Disk topology changed since the last export (added disk-")
    assert len(added["disks"]) == 3
    vm = lab.vm(path)
    for d in vm.disks:
        key = f"disk-{d.key}"
        assert cli.restore(added["vm"], added["generation"], key) == flat(lab, path, d.key)

    lab.write(path, 3 * MiB, length=BS, seed=4)
    inc = cli.export(path, "--incremental")
    assert inc["mode"] == "incremental" and inc["bytes_read"] == BS


def test_unknown_vm_and_missing_server_are_one_line_exit_2(cli: Cli) -> None:
    proc = cli.run("hyperexport", "--vm", "/DC0/vm/nope", "--output", str(cli.repo))
    assert proc.returncode == 2
    assert proc.stderr == "hyperexport: error: VM /DC0/vm/nope not found (no such inventory path)\n"
    env = {k: v for k, v in cli.env.items() if k != "GOVC_URL"}
    proc = cli.run("hyperexport", "--vm", "/DC0/vm/web", "--output", str(cli.repo), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--server" in proc.stderr and "GOVC_URL" in proc.stderr


def test_flags_instead_of_govc_env_and_no_password_without_tty(cli: Cli, lab: VcsimLab) -> None:
    s = lab.settings()
    base = {k: v for k, v in cli.env.items() if not k.startswith("GOVC_")}
    flags = ["--server", s.url, "--username", s.username, "--insecure"]
    proc = cli.run("hyperexport", "--vm", "/DC0/vm/small", "--incremental-info", *flags, env=base)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "hyperexport: error: no vSphere password: set HYPERSDK_VSPHERE_PASSWORD or "
        "GOVC_PASSWORD (a prompt needs a terminal)\n"
    )
    env = {**base, "HYPERSDK_VSPHERE_PASSWORD": PASSWORD}
    proc = cli.run("hyperexport", "--vm", "/DC0/vm/small", "--incremental-info", *flags, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "disk-2000" in proc.stdout


def test_errors_are_one_line_and_the_password_never_shows(
    cli: Cli, lab: VcsimLab, tmp_path: Path
) -> None:
    outputs: list[str] = []
    # a full run, then a wrong password, an unreachable server, TLS without --insecure
    outputs.append(str(cli.export("/DC0/vm/small")))
    bad = {**cli.env, "GOVC_PASSWORD": PASSWORD + "-wrong"}
    s = lab.settings()
    cases = [
        (bad, 1, f"vSphere {s.host}:{s.port} refused the login of user 'user': wrong user name"),
        ({**cli.env, "GOVC_URL": "https://127.0.0.1:9/sdk"}, 1, "cannot connect to vSphere"),
        ({**cli.env, "GOVC_INSECURE": "0"}, 1, "pass --insecure"),
    ]
    for env, code, words in cases:
        for extra in ([], ["--json"]):
            proc = cli.run(
                "hyperexport", "--vm", "/DC0/vm/small", "--output", str(cli.repo), *extra, env=env
            )
            assert proc.returncode == code, proc.stderr
            assert "Traceback" not in proc.stderr
            if extra:
                assert words in json.loads(proc.stdout)["error"]
            else:
                assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
            outputs += [proc.stdout, proc.stderr]
    assert not any(PASSWORD in o for o in outputs)
    for f in tmp_path.rglob("*"):
        if f.is_file() and "lab" not in f.relative_to(tmp_path).parts[:1]:
            assert PASSWORD.encode() not in f.read_bytes(), f
