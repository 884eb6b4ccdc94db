"""The daemon and the Python SDK against the vSphere lab: CBT routes, a full and an
incremental export job by inventory path, and a restore job equal to the lab's disk."""

from __future__ import annotations

from pathlib import Path

from hypersdk import HyperSDK
from hypersdk.lab import VcsimLab
from tests.daemon.live import Hypervisord
from tests.vsphere.conftest import MiB, flat, lab, lab_binary  # noqa: F401  (fixtures)

VM = "/DC0/vm/web"


def test_vsphere_through_the_daemon(lab: VcsimLab, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    env = lab.settings().govc_env()
    with Hypervisord(tmp_path / "hvd", output=repo, allow=(tmp_path,), env=env) as hvd:
        sdk = HyperSDK(hvd.base_url, token=hvd.token)
        assert sdk.get_cbt_status(VM)["cbt_enabled"] is False
        assert sdk.enable_cbt(VM)["message"] == f"CBT enabled successfully for {VM}"
        status = sdk.get_cbt_status(VM)
        assert status["cbt_enabled"] is True
        assert status["disks"][0]["key"] == "disk-2000"
        assert status["disks"][0]["backing_info"] == "FlatVer2"
        assert status["last_export"] is None and status["can_incremental"] is False

        lab.write(VM, 0, length=8 * MiB, seed=1)
        full = sdk.wait_for_export(sdk.export_vm(VM)["id"], timeout=60)
        assert full["state"] == "succeeded", full
        assert full["result"]["mode"] == "full"
        at_full = flat(lab, VM)

        lab.write(VM, 20 * MiB, length=MiB, seed=2)
        analysis = sdk.analyze_incremental_export(VM)
        assert analysis["can_incremental"] is True, analysis
        assert analysis["estimated_changed_bytes"] == MiB
        inc = sdk.wait_for_export(sdk.export_vm(VM, incremental=True)["id"], timeout=60)
        assert inc["state"] == "succeeded" and inc["result"]["mode"] == "incremental", inc
        assert inc["result"]["bytes_read"] == MiB

        gens = sdk.list_generations(vm=full["result"]["vm"])
        assert [g["type"] for g in gens] == ["full", "incremental"]
        for job, expected in ((full, at_full), (inc, flat(lab, VM))):
            out = tmp_path / f"{job['result']['generation']}.raw"
            restore = sdk.restore(
                vm=job["result"]["vm"], generation=job["result"]["generation"], to=str(out)
            )
            done = sdk.wait_for_export(restore["id"], timeout=60)
            assert done["state"] == "succeeded", done
            assert out.read_bytes() == expected
        sdk.close()
