"""The job lease against a real redis-server: one holder at a time, status writes only
by the holder, and a holder that lost its lease stops its run."""

from __future__ import annotations

import time

from hypersdk.daemon.fleet import lease_key, read_status, redis_client
from hypersdk.fleet.execute import _Keeper
from hypersdk.fleet.lease import Lease
from hypersdk.fleet.limits import Semaphores
from tests.fleet.rigs import RedisServer


def test_one_holder_and_only_the_holder_writes(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    first = Lease(client, "j-1", "first", seconds=5)
    second = Lease(client, "j-1", "second", seconds=5)
    assert first.acquire() and not second.acquire()
    assert first.update("j-1", phase="copying")
    assert not second.update("j-1", phase="hijacked")
    assert read_status(client, "j-1") == {"phase": "copying"}
    second.release()  # not its lease: nothing happens
    assert client.get(lease_key("j-1")) == b"first"
    first.release()
    assert second.acquire()


def test_a_holder_that_lost_its_lease_cancels_its_run(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    lease = Lease(client, "j-2", "stalled", seconds=3)
    assert lease.acquire()
    keeper = _Keeper(client, lease, Semaphores(client, "stalled", 3), 3)
    keeper.start()
    try:
        # it stalled past its lease and another worker took the job
        client.set(lease_key("j-2"), "new-holder", px=3000)
        deadline = time.monotonic() + 5
        while not keeper.cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keeper.cancel.is_set() and keeper.lost
        assert not lease.update("j-2", state="succeeded")  # it cannot end the job
    finally:
        keeper.stop()
    assert client.get(lease_key("j-2")) == b"new-holder"
