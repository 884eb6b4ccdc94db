"""Per-VM staleness gauges on /metrics, keyed by the VM's canonical locator."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from hypersdk.providers.factory import canonical_locator
from tests.daemon.live import Hypervisord, wait_job
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_last_success_and_failures_per_vm(
    hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path
) -> None:
    qsd.write(0, b"\x5a" * MiB)
    http = hvd.client()
    before = time.time()
    job = http.post("/exports", json={"vm_path": qsd.locator}).json()
    done = wait_job(http, job["id"])
    assert done["state"] == "succeeded", done
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # the file stays, nobody listens
    for spelling in (f"qemu:{dead}", f"qemu:{tmp_path}/./dead.sock"):
        failed = wait_job(http, http.post("/exports", json={"vm_path": spelling}).json()["id"])
        assert failed["state"] == "failed"

    text = http.get("/metrics").text
    good = canonical_locator(qsd.locator)
    bad = canonical_locator(f"qemu:{dead}")
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    stamp = float(lines[f'hypersdk_vm_last_success_timestamp_seconds{{vm="{good}"}}'])
    assert before - 1 <= stamp <= time.time() + 1
    assert int(lines[f'hypersdk_vm_last_success_bytes_read{{vm="{good}"}}']) == MiB
    assert lines[f'hypersdk_vm_failures_since_success{{vm="{good}"}}'] == "0"
    assert lines[f'hypersdk_vm_failures_since_success{{vm="{bad}"}}'] == "2"  # one VM, two names
    assert f'hypersdk_vm_last_success_timestamp_seconds{{vm="{bad}"}}' not in lines
    assert float(lines[f'hypersdk_vm_last_success_duration_seconds{{vm="{good}"}}']) > 0
