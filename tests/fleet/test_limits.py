"""Fleet limits and settings, against a real redis-server: a slot of a crashed holder
frees itself, all-or-nothing taking, placement keys of QEMU images, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hypersdk.daemon.config import load_config
from hypersdk.daemon.fleet import FleetLimits, redis_client
from hypersdk.errors import UsageError
from hypersdk.fleet.limits import Placement, Semaphores, Slot, filesystem_of, image_file
from tests.fleet.rigs import RedisServer

MOUNTINFO = """\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
40 22 0:50 / /mnt/vms rw,relatime shared:30 - nfs4 nas:/export/vms rw,vers=4.2
41 22 0:51 / /mnt/vms/local rw shared:31 - xfs /dev/sdb1 rw
"""


def test_a_crashed_holders_slot_frees_itself(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    slot = Slot("datastore", "ds1", 1)
    crashed = Semaphores(client, "crashed", ttl_seconds=1.0)
    assert crashed.try_take([slot])
    other = Semaphores(client, "other", ttl_seconds=1.0)
    assert not other.try_take([slot])  # the limit holds
    started = time.monotonic()
    assert other.take([slot], threading.Event())  # ... until the holder's slot expires
    assert time.monotonic() - started >= 0.5
    other.release()
    assert client.zcard(slot.key) == 0


def test_a_live_holder_keeps_its_slot_and_taking_is_all_or_nothing(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    ds, host = Slot("datastore", "ds1", 2), Slot("host", "esx1", 1)
    a = Semaphores(client, "a", ttl_seconds=1.0)
    assert a.try_take([host])
    for _ in range(3):
        time.sleep(0.4)
        a.renew()
    b = Semaphores(client, "b", ttl_seconds=1.0)
    assert not b.try_take([ds, host])
    assert client.zcard(ds.key) == 0  # the datastore slot it got was given back
    stop = threading.Event()
    stop.set()
    assert not b.take([ds, host], stop)  # a cancelled wait ends


def test_placement_keys() -> None:
    limits = FleetLimits(datastore=2, host=0)
    assert Placement("esx1", "ds1").slots(limits) == [Slot("datastore", "ds1", 2)]
    assert image_file('json:{"file": {"driver": "throttle", "file": {"filename": "/a"}}}') == "/a"
    assert image_file("/vms/a.qcow2") == "/vms/a.qcow2"


def test_the_datastore_of_an_image_is_its_filesystem(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    # a network share is the same datastore on every machine that mounts it
    assert filesystem_of("/mnt/vms/web.qcow2", str(info)) == "nas:/export/vms"
    # a local disk is this machine's
    assert str(filesystem_of("/mnt/vms/local/db.qcow2", str(info))).endswith(":/dev/sdb1")
    assert str(filesystem_of("/var/lib/x.qcow2", str(info))).endswith(":/dev/sda2")


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="broker must be a redis://"):
        load_config(broker="amqp://h/", env={})
    config = tmp_path / "c.toml"
    config.write_text('broker = "redis://127.0.0.1:1/0"\n[fleet]\ndatastore_limits = 3\n')
    config.chmod(0o600)
    with pytest.raises(UsageError, match="unknown key in \\[fleet\\]: datastore_limits"):
        load_config(config_file=str(config), env={})
    config.write_text('broker = "redis://127.0.0.1:1/0"\n[fleet]\ndatastore_limit = -1\n')
    with pytest.raises(UsageError, match="datastore_limit must be 0"):
        load_config(config_file=str(config), env={})
    config.write_text('broker = "redis://127.0.0.1:1/0"\n[fleet]\ndatastore_limit = 3\n')
    loaded = load_config(config_file=str(config), env={})
    assert loaded.broker == "redis://127.0.0.1:1/0" and loaded.fleet_datastore_limit == 3
    assert load_config(env={}).broker is None  # embedded mode by default


def test_hyperworker_and_hypervisord_refuse_bad_brokers_in_one_line(tmp_path: Path) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "hypersdk.fleet.worker", "--broker", "http://x/"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert worker.returncode == 2
    assert worker.stderr.strip().splitlines() == [
        "hyperworker: error: broker must be a redis://HOST:PORT/DB (or rediss://) URL, "
        "not 'http://x/'"
    ]
    daemon = subprocess.run(
        [
            sys.executable,
            "-m",
            "hypersdk.daemon.main",
            "--state-dir",
            str(tmp_path / "s"),
            "--broker",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert daemon.returncode == 1
    assert (
        daemon.stderr.strip()
        .splitlines()[-1]
        .startswith("hypervisord: error: cannot reach the broker redis://127.0.0.1:1/0")
    ), daemon.stderr
