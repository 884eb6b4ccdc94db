"""NbdClient against nbdkit: injected errors, short block status, limits, TCP."""

from __future__ import annotations

import struct
import threading
import time

import pytest
from nbd_servers import Servers, nbdinfo_map

from hypersdk.errors import NbdError
from hypersdk.nbd import (
    STATE_HOLE,
    STATE_ZERO,
    BlockStatusExtent,
    NbdClient,
    NbdCommandError,
    NbdConnectionError,
)
from hypersdk.nbd import protocol as p

MiB = 1024 * 1024


def pattern(offset: int, length: int) -> bytes:
    """What nbdkit's pattern plugin serves: each 8-byte word is its big-endian offset."""
    start = offset - offset % 8
    words = b"".join(struct.pack(">Q", o) for o in range(start, offset + length + 8, 8))
    return words[offset - start : offset - start + length]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EPERM", p.EPERM),
        ("EIO", p.EIO),
        ("ENOMEM", p.ENOMEM),
        ("EINVAL", p.EINVAL),
        ("ENOSPC", p.ENOSPC),
        ("ESHUTDOWN", p.ESHUTDOWN),
    ],
)
def test_read_error_becomes_nbd_error(servers: Servers, name: str, value: int) -> None:
    sock, _ = servers.nbdkit(
        "memory", "1M", f"error={name}", "error-pread-rate=1", filters=("error",)
    )
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        with pytest.raises(NbdCommandError) as info:
            client.pread(4096, 8192)
        assert info.value.error == value
        message = str(info.value)
        assert message.startswith("NBD server failed read of 8192 bytes at offset 4096: ")
        assert name in message
        assert "\n" not in message
        # the error belongs to that request only: the connection stays usable
        client.pwrite(0, b"still fine")
        assert client.block_status("base:allocation", 0, MiB)


def test_error_in_one_of_many_split_requests(servers: Servers, tmp_path: object) -> None:
    sock, _ = servers.nbdkit(
        "memory",
        "64M",
        "blocksize-maximum=1M",
        "error-pread-rate=0.5",
        filters=("blocksize-policy", "error"),
    )
    with NbdClient.connect(sock) as client:
        assert client.block_size_maximum == MiB
        with pytest.raises(NbdCommandError, match="EIO"):
            client.pread(0, 32 * MiB)  # 32 requests, about half fail


def test_reads_split_at_the_servers_maximum(servers: Servers) -> None:
    # blocksize-error-policy=error makes nbdkit refuse any request above the maximum
    sock, _ = servers.nbdkit(
        "pattern",
        "16M",
        "blocksize-minimum=512",
        "blocksize-preferred=64K",
        "blocksize-maximum=256K",
        "blocksize-error-policy=error",
        filters=("blocksize-policy",),
    )
    with NbdClient.connect(sock) as client:
        assert (client.block_size_minimum, client.block_size_preferred) == (512, 65536)
        assert client.block_size_maximum == 256 * 1024
        assert client.pread(512, 3 * MiB) == pattern(512, 3 * MiB)
        # unaligned reads are widened to the minimum block size and cut back
        assert client.pread(1001, 3 * MiB + 5) == pattern(1001, 3 * MiB + 5)
        buf = bytearray(700)
        client.pread_into(16 * MiB - 700, buf)
        assert buf == pattern(16 * MiB - 700, 700)


def test_unaligned_write_refused(servers: Servers) -> None:
    sock, _ = servers.nbdkit(
        "memory", "1M", "blocksize-minimum=4096", filters=("blocksize-policy",)
    )
    with NbdClient.connect(sock) as client:
        with pytest.raises(NbdError, match="requires requests aligned to 4096 bytes"):
            client.pwrite(100, b"x" * 4096)
        client.pwrite(4096, b"y" * 4096)
        assert client.pread(4000, 200) == bytes(96) + b"y" * 104


def short_extents_server(servers: Servers, size: str, flags_expr: str) -> str:
    """An nbdkit server that answers every block status with ONE extent, up to the
    next 4 KiB boundary, whatever length was asked for."""
    sock, _ = servers.nbdkit(
        "eval",
        f"get_size=echo {size}",
        "pread=head -c $3 /dev/zero",
        "can_extents=exit 0",
        f"extents=echo $4 $(( 4096 - $4 % 4096 )) {flags_expr}",
    )
    return sock


def test_block_status_loops_by_returned_extents(servers: Servers) -> None:
    # flags alternate every 4 KiB (data, hole, data, ...), so nothing merges
    sock = short_extents_server(servers, "1M", "$(( ($4 / 4096) % 2 ))")
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        extents = client.block_status("base:allocation", 0, client.size)
        expected = [
            BlockStatusExtent(off, 4096, STATE_HOLE if (off // 4096) % 2 else 0)
            for off in range(0, MiB, 4096)
        ]
        assert extents == expected
        assert [(e.offset, e.length, e.flags) for e in extents] == nbdinfo_map(sock)
        # an unaligned sub-range: first and last extents are clipped
        assert client.block_status("base:allocation", 4000, 5000) == [
            BlockStatusExtent(4000, 96, 0),
            BlockStatusExtent(4096, 4096, STATE_HOLE),
            BlockStatusExtent(8192, 808, 0),
        ]


def test_short_extents_with_equal_flags_are_merged(servers: Servers) -> None:
    sock = short_extents_server(servers, "2M", "hole,zero")
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        assert client.block_status("base:allocation", 0, client.size) == [
            BlockStatusExtent(0, 2 * MiB, STATE_HOLE | STATE_ZERO)
        ]


def test_block_status_error(servers: Servers) -> None:
    sock, _ = servers.nbdkit(
        "memory", "1M", "error=EIO", "error-extents-rate=1", filters=("error",)
    )
    with (
        NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client,
        pytest.raises(NbdCommandError, match="failed block-status"),
    ):
        client.block_status("base:allocation", 0, MiB)


def test_write_errors(servers: Servers) -> None:
    sock, _ = servers.nbdkit(
        "memory",
        "1M",
        "error=ENOSPC",
        "error-pwrite-rate=1",
        "error-zero-rate=1",
        "error-trim-rate=1",
        filters=("error",),
    )
    with NbdClient.connect(sock) as client:
        with pytest.raises(NbdCommandError, match="failed write of 5 bytes at offset 0: ENOSPC"):
            client.pwrite(0, b"hello")
        with pytest.raises(NbdCommandError, match="failed write-zeroes"):
            client.write_zeroes(0, 4096)
        with pytest.raises(NbdCommandError, match="failed trim"):
            client.trim(0, 4096)


def test_tcp_connection(servers: Servers) -> None:
    port = servers.nbdkit_tcp("pattern", "8M")
    for address in (f"tcp:127.0.0.1:{port}", f"127.0.0.1:{port}"):
        with NbdClient.connect(address) as client:
            assert client.size == 8 * MiB
            assert client.pread(1000, 3 * MiB) == pattern(1000, 3 * MiB)


def test_pending_reads_fail_when_server_dies(servers: Servers) -> None:
    sock, pid = servers.nbdkit("memory", "1M", "delay-read=10", filters=("delay",))
    client = NbdClient.connect(sock)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            client.pread(0, 4096)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    servers.kill(pid)
    for t in threads:
        t.join(timeout=5)
    assert time.monotonic() - start < 5
    assert len(errors) == 3
    assert all(isinstance(e, NbdConnectionError) for e in errors)
    assert "closed the connection" in str(errors[0])
    client.close()


def test_unanswered_request_times_out(servers: Servers) -> None:
    sock, _ = servers.nbdkit("memory", "1M", "delay-read=10", filters=("delay",))
    with NbdClient.connect(sock, timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises(NbdConnectionError, match="did not answer read of 4096 bytes"):
            client.pread(0, 4096)
        assert time.monotonic() - start < 3
        with pytest.raises(NbdConnectionError):
            client.pread(0, 1)


def test_flags_of_a_read_only_server(servers: Servers) -> None:
    sock, _ = servers.nbdkit("-r", "pattern", "1M")
    with NbdClient.connect(sock) as client:
        assert client.read_only
        assert not client.can_trim
        with pytest.raises(NbdError, match="read-only"):
            client.trim(0, 1)
