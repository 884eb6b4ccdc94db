"""The CBT audit through the daemon and the Python SDK: the job's result carries the
audit, the generation list marks the suspect one, and /metrics counts the misses."""

from __future__ import annotations

import random

from hypersdk import HyperSDK
from tests.client.conftest import TOKEN
from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_audit_export_through_the_sdk(hvd: Hypervisord, qsd: QemuStorageDaemon) -> None:
    rng = random.Random(9)
    qsd.write(0, rng.randbytes(4 * MiB))
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        client.enable_cbt(qsd.locator)
        full = client.wait_for_export(client.export_vm(qsd.locator)["id"], timeout=60)
        assert full["state"] == "succeeded", full
        for name in qsd.bitmaps(qsd.node_name):
            qsd.qmp("block-dirty-bitmap-disable", node=qsd.node_name, name=name)
        qsd.write(2 * MiB, rng.randbytes(4096))
        for name in qsd.bitmaps(qsd.node_name):
            qsd.qmp("block-dirty-bitmap-enable", node=qsd.node_name, name=name)
        inc = client.wait_for_export(
            client.export_vm(qsd.locator, incremental=True)["id"], timeout=60
        )
        assert inc["result"]["mode"] == "incremental" and inc["result"]["bytes_read"] == 0

        done = client.wait_for_export(client.export_vm(qsd.locator, audit=True)["id"], timeout=60)
        audit = done["result"]["audit"]
        assert done["mode"] == "full" and audit["previous"] == inc["result"]["generation"]
        assert audit["disks"][0]["missed"] == [{"offset": 2 * MiB, "length": MiB}]

        gens = {g["id"]: g for g in client.list_generations()}
        assert gens[inc["result"]["generation"]]["suspect"] is True
        assert gens[done["result"]["generation"]]["audit"]["blocks_missed"] == 1
        metrics = hvd.client().get("/metrics").text
        assert "hypersdk_cbt_missed_blocks_total 1\n" in metrics
        assert "hypersdk_cbt_audits_total 1\n" in metrics
