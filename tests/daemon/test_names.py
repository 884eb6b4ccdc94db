"""The daemon reads a VM's name as hyperctl does: the locator it was exported from (any
spelling), its id or its name, in ``vm`` fields and the ``vm`` query parameter. A VM the
repository does not hold is a 404 naming it; two spellings of one VM share one export."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from hypersdk import ConflictError, HyperSDK, NotFoundError
from hypersdk.lab import VcsimLab
from tests.daemon.live import Hypervisord, wait_job, wait_running
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2
from tests.vsphere.conftest import flat, lab, lab_binary  # noqa: F401  (fixtures)


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def export(http: httpx.Client, vm_path: str, **fields: Any) -> dict[str, Any]:
    r = http.post("/exports", json={"vm_path": vm_path, **fields})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    result: dict[str, Any] = job["result"]
    return result


def error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    message: str = r.json()["error"]["message"]
    return message


def test_qcow2_names_in_every_route(hvd: Hypervisord, tmp_path: Path) -> None:
    image = tmp_path / "disks" / "db1.qcow2"
    image.parent.mkdir()
    create_qcow2(image, 2 * MiB)
    qemu_io(image, "write -P 0x33 0 512k")
    http = hvd.client()
    assert http.post("/cbt/enable", json={"vm_path": f"qcow2:{image}"}).status_code == 200
    # exported under a roundabout spelling; recorded under the canonical one
    first = export(http, f"qcow2:{tmp_path}/disks/../disks/db1.qcow2")
    qemu_io(image, "write -P 0x44 1M 64k")
    export(http, f"qcow2:{image}", incremental=True)

    names = [f"qcow2:{image}", f"qcow2:{tmp_path}//disks/./db1.qcow2", first["vm"], "db1"]
    for name in names:
        gens = http.get("/generations", params={"vm": name}).json()["generations"]
        assert [g["vm"] for g in gens] == [first["vm"]] * 2, name
        assert gens[0]["locator"] == f"qcow2:{image}"

        to = tmp_path / "out.raw"
        r = http.post("/restores", json={"vm": name, "to": str(to), "force": True})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "succeeded" and job["result"]["vm_id"] == first["vm"], job
        reference = tmp_path / "ref.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", image, reference], check=True)
        assert to.read_bytes() == reference.read_bytes(), name

        r = http.post("/verifications", json={"vm": name, "generation": "latest"})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "succeeded" and job["result"]["ok"], job
        assert job["result"]["generations"] == 1

    for unknown in (f"qcow2:{tmp_path}/disks/db2.qcow2", "db2", "/DC0/vm/db1"):
        message = error(http.get("/generations", params={"vm": unknown}), 404, "not_found")
        assert repr(unknown) in message
        body = {"vm": unknown, "to": str(tmp_path / "x.raw")}
        assert repr(unknown) in error(http.post("/restores", json=body), 404, "not_found")
        body = {"vm": unknown}
        assert repr(unknown) in error(http.post("/verifications", json=body), 404, "not_found")


def test_two_spellings_of_one_vm_conflict(
    hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path
) -> None:
    """The one-export-per-VM check compares canonical keys, not the strings sent."""
    qsd.write(0, random.Random(9).randbytes(8 * MiB))
    http = hvd.client()
    assert http.post("/cbt/enable", json={"vm_path": qsd.locator}).status_code == 200
    # slow (zstd 19, one thread) so that the second request meets the first one running
    slow = {"compression": "zstd", "compression_level": 19, "parallel": 1, "block_size": 65536}
    r = http.post("/exports", json={"vm_path": qsd.locator, **slow})
    assert r.status_code == 202, r.text
    first = r.json()["id"]
    wait_running(http, first)
    socket = str(qsd.qmp_path)
    other = f"qemu:{socket.replace('/qsd/', '/qsd/../qsd/', 1)}?nbd={qsd.nbd_path}"
    message = error(http.post("/exports", json={"vm_path": other}), 409, "conflict")
    assert first in message
    assert http.delete(f"/exports/{first}").json()["state"] == "cancelled"
    # once it is gone the other spelling exports the same VM
    assert export(http, other)["mode"] == "full"


def test_vsphere_names_through_the_daemon_and_sdk(lab: VcsimLab, tmp_path: Path) -> None:  # noqa: F811
    """Exported by ``DC0/vm/small`` (no slash); listed, restored and verified by the path
    with its slash, the id and the name; two spellings of one running export conflict."""
    env = lab.settings().govc_env()
    with Hypervisord(tmp_path / "hvd", output=tmp_path / "repo", allow=(tmp_path,), env=env) as hvd:
        sdk = HyperSDK(hvd.base_url, token=hvd.token)
        sdk.enable_cbt("/DC0/vm/small")
        done = sdk.wait_for_export(sdk.export_vm("DC0/vm/small")["id"], timeout=60)
        assert done["state"] == "succeeded", done
        vm_id = done["result"]["vm"]
        for name in ("/DC0/vm/small", "DC0/vm/small/", vm_id, "small"):
            gens = sdk.list_generations(vm=name)
            assert [g["vm"] for g in gens] == [vm_id] and gens[0]["locator"] == "/DC0/vm/small"
            out = tmp_path / "small.raw"
            job = sdk.restore(vm=name, to=str(out), force=True)
            assert sdk.wait_for_export(job["id"], timeout=60, poll_interval=0.05)["state"] == (
                "succeeded"
            )
            assert out.read_bytes() == flat(lab, "/DC0/vm/small"), name
            job = sdk.verify(vm=name)
            assert sdk.wait_for_export(job["id"], timeout=60, poll_interval=0.05)["result"]["ok"]
        with pytest.raises(NotFoundError) as nf:
            sdk.list_generations(vm="/DC0/vm/web")  # in the lab, not in the repository
        assert "'/DC0/vm/web'" in nf.value.message

        running = sdk.export_vm("/DC0/vm/small", incremental=True)  # logs in, snapshots: slow
        with pytest.raises(ConflictError) as conflict:
            sdk.export_vm("DC0/vm/small")
        assert running["id"] in conflict.value.message
        assert sdk.wait_for_export(running["id"], timeout=60)["state"] == "succeeded"
        sdk.close()
