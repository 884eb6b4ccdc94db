"""A backup policy whose VMs are a vSphere glob, expanded at run time against the lab's
inventory, with each VM's ESXi host and datastore as its placement keys."""

from __future__ import annotations

import time
from pathlib import Path

from hypersdk import HyperSDK
from hypersdk.lab import VcsimLab
from hypersdk.providers.vsphere import list_vms
from tests.daemon.live import Hypervisord, wait_job
from tests.vsphere.conftest import MiB, lab, lab_binary, settings_of  # noqa: F401  (fixtures)


def test_a_glob_names_the_vms_of_the_run(lab: VcsimLab, tmp_path: Path) -> None:  # noqa: F811
    found = {v.path: v for v in list_vms(settings_of(lab))}
    assert {"/DC0/vm/web", "/DC0/vm/small", "/DC0/vm/two-disks"} <= set(found)
    assert all(v.host and v.datastore for v in found.values())

    env = lab.settings().govc_env()
    with Hypervisord(tmp_path / "hvd", output=tmp_path / "repo", allow=(tmp_path,), env=env) as hvd:
        sdk = HyperSDK(hvd.base_url, token=hvd.token)
        for vm in ("/DC0/vm/small", "/DC0/vm/two-disks"):
            sdk.enable_cbt(vm)
            lab.write(vm, 0, length=MiB, seed=3)
        made = sdk.put_policy(
            "lab",
            {"vms": ["/DC0/vm/[st]*", "/DC0/vm/nothing-*"], "schedule": "0 0 1 1 *",
             "max_per_host": 1, "retention": {"keep_last": 1}},
        )  # fmt: skip
        assert made["vms"][0] == {"vm": "/DC0/vm/[st]*", "host": None, "datastore": None}
        run = sdk.run_policy("lab")
        for export in run["exports"]:
            if export["job_id"]:
                assert wait_job(hvd.client(), export["job_id"])["state"] == "succeeded"
        history = sdk.policy_history("lab")
        while history[0]["state"] == "running":
            time.sleep(0.05)
            history = sdk.policy_history("lab")
        final = history[0]
        by_vm = {e["vm"]: e for e in final["exports"]}
        assert set(by_vm) == {"/DC0/vm/small", "/DC0/vm/two-disks", "/DC0/vm/nothing-*"}
        assert by_vm["/DC0/vm/small"]["state"] == "succeeded"
        assert by_vm["/DC0/vm/two-disks"]["state"] == "succeeded"
        assert by_vm["/DC0/vm/nothing-*"]["state"] == "failed"
        assert "no VM of the vSphere server matches" in by_vm["/DC0/vm/nothing-*"]["error"]
        assert final["state"] == "failed" and final["reason"] == "1 of 3 exports failed"
        # Both on one ESXi host and max_per_host 1: the two exports ran one after the other.
        assert found["/DC0/vm/small"].host == found["/DC0/vm/two-disks"].host
        jobs = [
            sdk.get_export(by_vm[vm]["job_id"]) for vm in ("/DC0/vm/small", "/DC0/vm/two-disks")
        ]
        first, second = sorted(jobs, key=lambda j: j["started"])
        assert second["started"] >= first["finished"]
        sdk.close()
