"""NbdPool: several connections only when the server sets NBD_FLAG_CAN_MULTI_CONN, each
reading thread on its own connection, and every read returns exactly the right bytes."""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

import pytest
from nbd_servers import Servers, run

from hypersdk.errors import NbdError
from hypersdk.nbd import NbdPool, NbdProtocolError
from hypersdk.nbd.client import NbdClient

MiB = 1024 * 1024


def pattern(offset: int, length: int) -> bytes:
    """What nbdkit's pattern plugin serves: each 8-byte word is its big-endian offset."""
    start = offset - offset % 8
    words = b"".join(o.to_bytes(8, "big") for o in range(start, offset + length + 8, 8))
    return words[offset - start : offset - start + length]


def connections_that_read(log: Path) -> set[int]:
    return {int(m) for m in re.findall(r"connection=(\d+) Read ", log.read_text())}


def connections_opened(log: Path) -> set[int]:
    return {int(m) for m in re.findall(r"connection=(\d+) Connect ", log.read_text())}


def read_in_threads(pool: NbdPool, size: int, threads: int) -> dict[int, bytes]:
    """Every thread reads its own share of 256 KiB pieces; returns offset -> bytes."""
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    step = 256 * 1024

    def reader(first: int) -> None:
        try:
            barrier.wait()  # all threads bind to a connection before any finishes
            for offset in range(first * step, size, threads * step):
                got[offset] = pool.pread(offset, step)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=reader, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert not errors, errors
    return got


@pytest.mark.parametrize("mode", ["unsafe", "disable"])
def test_connections_follow_the_multi_conn_flag(
    servers: Servers, tmp_path: Path, mode: str
) -> None:
    log = tmp_path / f"{mode}.log"
    sock, _ = servers.nbdkit(
        "pattern",
        "8M",
        f"multi-conn-mode={mode}",
        f"logfile={log}",
        filters=("log", "multi-conn"),
    )
    with NbdPool.connect(sock, connections=4) as pool:
        assert pool.primary.can_multi_conn is (mode == "unsafe")
        assert pool.connections == (4 if mode == "unsafe" else 1)
        got = read_in_threads(pool, 8 * MiB, threads=4)
    assert len(got) == 32
    for offset, data in got.items():
        assert data == pattern(offset, len(data)), offset
    # the server saw as many connections, and with multi-conn every one served reads
    assert len(connections_opened(log)) == (4 if mode == "unsafe" else 1)
    assert len(connections_that_read(log)) == (4 if mode == "unsafe" else 1)


def test_qemu_nbd_read_only_export_reads_exactly_over_four_connections(
    servers: Servers, tmp_path: Path
) -> None:
    image = tmp_path / "disk.raw"
    content = bytearray(random.Random(3).randbytes(8 * MiB))
    content[2 * MiB : 3 * MiB] = bytes(MiB)  # a zero range: hole chunks in the replies
    image.write_bytes(bytes(content))
    run("fallocate", "--punch-hole", "--offset", str(2 * MiB), "--length", str(MiB), str(image))
    sock = servers.qemu_nbd(image, "raw")
    with NbdPool.connect(sock, meta_contexts=("base:allocation",)) as pool:
        assert pool.connections == 4  # QEMU sets multi-conn on read-only exports
        assert pool.meta_contexts == pool.primary.meta_contexts
        assert pool.block_status("base:allocation", 0, pool.size)
        got = read_in_threads(pool, len(content), threads=6)  # more threads than sockets
        buf = bytearray(MiB + 3)
        pool.pread_into(5 * MiB - 1, buf)
    assert buf == content[5 * MiB - 1 : 6 * MiB + 2]
    assert b"".join(got[o] for o in sorted(got)) == bytes(content)


def test_each_thread_keeps_one_connection(servers: Servers) -> None:
    sock, _ = servers.nbdkit("pattern", "1M", "multi-conn-mode=unsafe", filters=("multi-conn",))
    with NbdPool.connect(sock, connections=3) as pool:
        seen: list[NbdClient] = []
        barrier = threading.Barrier(3)

        def bind() -> None:
            barrier.wait()
            first = pool._client()
            pool.pread(0, 4096)
            assert pool._client() is first
            seen.append(first)

        threads = [threading.Thread(target=bind) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len({id(c) for c in seen}) == 3


def test_export_that_changes_between_connections_is_refused(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, _ = servers.nbdkit("pattern", "2M", "multi-conn-mode=unsafe", filters=("multi-conn",))
    small, _ = servers.nbdkit("pattern", "1M", "multi-conn-mode=unsafe", filters=("multi-conn",))
    real = NbdClient.connect.__func__  # type: ignore[attr-defined]
    calls: list[str] = []

    def connect(cls: type[NbdClient], address: str, *args: object) -> NbdClient:
        # the second connection reaches another server: as if the export was replaced
        calls.append(address)
        return real(cls, small if len(calls) > 1 else address, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(NbdClient, "connect", classmethod(connect))
    with pytest.raises(NbdProtocolError, match="changed between connections"):
        NbdPool.connect(big, connections=2)
    assert len(calls) == 2


def test_extra_connection_that_fails_leaves_fewer(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _ = servers.nbdkit("pattern", "1M", "multi-conn-mode=unsafe", filters=("multi-conn",))
    real = NbdClient.connect.__func__  # type: ignore[attr-defined]
    calls: list[str] = []

    def connect(cls: type[NbdClient], address: str, *args: object) -> NbdClient:
        calls.append(address)
        if len(calls) == 3:  # the third connection finds no server
            return real(cls, address + ".gone", *args)  # type: ignore[no-any-return]
        return real(cls, address, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(NbdClient, "connect", classmethod(connect))
    with NbdPool.connect(sock, connections=4) as pool:
        assert pool.connections == 2
        assert pool.pread(8, 16) == pattern(8, 16)


def reads_logged(log: Path) -> list[tuple[int, int]]:
    found = re.findall(
        r"connection=\d+ Read id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)", log.read_text()
    )
    return sorted((int(o, 16), int(c, 16)) for o, c in found)


@pytest.mark.parametrize(
    ("request_size", "expected"), [(None, [MiB]), (512 * 1024, [512 * 1024] * 2)]
)
def test_a_block_is_read_as_pipelined_requests(
    servers: Servers, tmp_path: Path, request_size: int | None, expected: list[int]
) -> None:
    log = tmp_path / "reads.log"
    sock, _ = servers.nbdkit("pattern", "4M", f"logfile={log}", filters=("log",))
    with NbdPool.connect(sock, read_request_size=request_size) as pool:
        assert pool.pread(MiB, MiB) == pattern(MiB, MiB)
        buf = bytearray(MiB)
        pool.pread_into(2 * MiB, buf)
        assert buf == pattern(2 * MiB, MiB)
    reads = reads_logged(log)
    assert [count for _, count in reads] == expected * 2
    # the pieces tile each read exactly
    assert sum(count for _, count in reads) == 2 * MiB
    assert reads[0][0] == MiB and reads[-1][0] + reads[-1][1] == 3 * MiB


def test_read_request_size_is_clamped_to_the_servers_limits(servers: Servers) -> None:
    sock, _ = servers.nbdkit(
        "pattern",
        "4M",
        "blocksize-minimum=4096",
        "blocksize-maximum=256K",
        "blocksize-error-policy=error",  # a request above the maximum fails
        filters=("blocksize-policy",),
    )
    with NbdClient.connect(sock) as client:
        client.set_read_request_size(512 * 1024)
        assert client.read_request_size == 256 * 1024
        assert client.pread(0, MiB) == pattern(0, MiB)
        client.set_read_request_size(6000)
        assert client.read_request_size == 4096
        assert client.pread(4096, 3 * 4096) == pattern(4096, 3 * 4096)
        client.set_read_request_size(1)
        assert client.read_request_size == 4096


def test_reads_started_ahead_land_in_their_buffers(servers: Servers, tmp_path: Path) -> None:
    """start_read sends at once and waits later (the export's read-ahead): eight reads in
    flight over the pool's connections, waited for out of order, each in its own buffer."""
    log = tmp_path / "reads.log"
    sock, _ = servers.nbdkit(
        "pattern", "8M", "multi-conn-mode=unsafe", f"logfile={log}", filters=("log", "multi-conn")
    )
    with NbdPool.connect(sock, connections=4) as pool:
        buffers = [bytearray(MiB) for _ in range(8)]
        waits = [pool.start_read(i * MiB, buffers[i]) for i in range(8)]
        for i in (7, 0, 3, 5, 1, 2, 6, 4):
            waits[i]()
            assert buffers[i] == pattern(i * MiB, MiB), i
    assert len(connections_that_read(log)) == 4  # spread over every connection


def test_a_failed_read_started_ahead_raises_when_waited_for(servers: Servers) -> None:
    sock, _ = servers.nbdkit("memory", "1M", "error=EIO", "error-pread-rate=1", filters=("error",))
    with NbdPool.connect(sock) as pool:
        wait = pool.start_read(0, bytearray(4096))  # sending does not fail ...
        with pytest.raises(NbdError, match="EIO"):
            wait()  # ... the wait does, with the server's error
