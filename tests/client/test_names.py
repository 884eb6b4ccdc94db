"""Both Python SDK clients pass a VM's name through: the locator it was exported from
(another spelling too), its id and its name list, restore and verify the same VM; a VM
the repository does not hold is NotFoundError naming it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from hypersdk import AsyncHyperSDK, HyperSDK, NotFoundError
from tests.client.conftest import TOKEN
from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_every_name_through_the_sdk(
    hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path
) -> None:
    qsd.write(0, random.Random(4).randbytes(MiB))
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        client.enable_cbt(qsd.locator)
        done = client.wait_for_export(
            client.export_vm(qsd.locator)["id"], timeout=60, poll_interval=0.05
        )
        assert done["state"] == "succeeded", done
        vm_id, vm_name = done["result"]["vm"], done["result"]["vm_name"]
        qsd.flush()
        disk = qsd.read(0, qsd.size)

        socket = str(qsd.qmp_path)
        names = [qsd.locator, f"qemu:{socket}", f"qemu:{socket.replace('/qsd/', '/qsd/./')}"]
        for name in [*names, vm_id, vm_name]:
            gens = client.list_generations(vm=name)
            assert [g["vm"] for g in gens] == [vm_id], name
            to = tmp_path / "restored.raw"
            job = client.restore(vm=name, to=str(to), force=True)
            assert (
                client.wait_for_export(job["id"], timeout=30, poll_interval=0.05)["state"]
                == "succeeded"
            )
            assert to.read_bytes() == disk, name
            job = client.verify(vm=name, generation="latest")
            assert (
                client.wait_for_export(job["id"], timeout=30, poll_interval=0.05)["result"]["ok"]
                is True
            )

        for unknown in (f"qemu:{tmp_path / 'other.sock'}", "other-vm"):
            with pytest.raises(NotFoundError) as nf:
                client.list_generations(vm=unknown)
            assert nf.value.status == 404 and repr(unknown) in nf.value.message
            with pytest.raises(NotFoundError):
                client.restore(vm=unknown, to=str(tmp_path / "x.raw"))

    async def listed(name: str) -> list[str]:
        async with AsyncHyperSDK(hvd.base_url, token=TOKEN) as client:
            return [g["vm"] for g in await client.list_generations(vm=name)]

    assert asyncio.run(listed(names[-1])) == [vm_id]
