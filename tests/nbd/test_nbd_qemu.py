"""NbdClient against qemu-nbd: reads, block status, dirty bitmaps, writes."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from nbd_servers import Servers, nbdinfo_map, run

from hypersdk.errors import NbdError
from hypersdk.nbd import (
    STATE_DIRTY,
    STATE_HOLE,
    STATE_ZERO,
    BlockStatusExtent,
    NbdClient,
    NbdConnectionError,
    NbdOptionError,
)

MiB = 1024 * 1024
SIZE = 64 * MiB
BITMAP = "b0"


def qemu_io(image: Path, fmt: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", fmt]
    for c in commands:
        argv += ["-c", c]
    run(*argv, str(image))


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    """64 MiB qcow2: data, zeroes, a hole; bitmap b0 records what came after it."""
    image = tmp_path / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE))
    qemu_io(image, "qcow2", "write -P 0x11 0 3M", "write -P 0x22 10M 1M", "write -P 0x33 40M 8M")
    run("qemu-img", "bitmap", "--add", str(image), BITMAP)
    qemu_io(
        image,
        "qcow2",
        "write -P 0x44 1M 64k",  # dirty data inside old data
        "write -z 10M 512k",  # dirty but reads as zeros: must not be dropped
        "discard 44M 1M",  # dirty, becomes a hole
        "write -P 0x55 60M 192k",  # dirty data in a former hole
    )
    return image


def raw_of(image: Path, fmt: str) -> bytes:
    """The image's guest-visible content, as qemu-img converts it."""
    out = image.with_suffix(".ref.raw")
    run("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(image), str(out))
    return out.read_bytes()


def as_tuples(extents: list[BlockStatusExtent]) -> list[tuple[int, int, int]]:
    return [(e.offset, e.length, e.flags) for e in extents]


def test_qcow2_reads_equal_image(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    expected = raw_of(qcow2, "qcow2")
    with NbdClient.connect(sock) as client:
        assert client.size == SIZE
        assert client.read_only
        assert client.pread(0, SIZE) == expected
        assert client.pread(MiB - 7, 13) == expected[MiB - 7 : MiB + 6]
        assert client.pread(SIZE, 0) == b""


def test_raw_reads_cross_max_request(servers: Servers, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    data = bytearray(os.urandom(48 * MiB))
    data[8 * MiB : 16 * MiB] = bytes(8 * MiB)
    image.write_bytes(data)
    sock = servers.qemu_nbd(image, "raw")
    with NbdClient.connect(f"unix:{sock}") as client:
        assert client.block_size_maximum == 32 * MiB
        # 40 MiB + a bit, unaligned: split into requests of at most 32 MiB
        assert client.pread(1000, 40 * MiB + 123) == bytes(data[1000 : 1000 + 40 * MiB + 123])
        assert client.pread(0, len(data)) == bytes(data)


def test_many_threads_read_at_once(servers: Servers, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    data = os.urandom(16 * MiB)
    image.write_bytes(data)
    sock = servers.qemu_nbd(image, "raw")
    errors: list[BaseException] = []
    with NbdClient.connect(sock) as client:

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(40):
                    offset = rng.randrange(0, len(data) - 1)
                    length = rng.randrange(1, min(2 * MiB, len(data) - offset) + 1)
                    assert client.pread(offset, length) == data[offset : offset + length]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors


def test_base_allocation_equals_nbdinfo(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    expected = nbdinfo_map(sock)
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        assert set(client.meta_contexts) == {"base:allocation"}
        extents = client.block_status("base:allocation", 0, client.size)
    assert as_tuples(extents) == expected
    # the extents tile the export exactly
    assert extents[0].offset == 0
    assert sum(e.length for e in extents) == SIZE
    assert any(e.flags == STATE_HOLE | STATE_ZERO for e in extents)
    assert any(e.flags == 0 for e in extents)


def test_block_status_is_clipped_to_the_range(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        extents = client.block_status("base:allocation", 2 * MiB + 5, 2 * MiB)
    assert as_tuples(extents) == [(2 * MiB + 5, MiB - 5, 0), (3 * MiB, MiB + 5, 3)]


def test_dirty_bitmap_equals_nbdinfo(servers: Servers, qcow2: Path) -> None:
    # qemu-nbd --read-only opens the image read-only, so an *enabled* bitmap is
    # accepted here (QEMU refuses it only for a writable node exported read-only).
    context = f"qemu:dirty-bitmap:{BITMAP}"
    sock = servers.qemu_nbd(qcow2, "qcow2", bitmap=BITMAP)
    expected = nbdinfo_map(sock, context)
    with NbdClient.connect(sock, meta_contexts=("base:allocation", context)) as client:
        dirty = client.block_status(context, 0, client.size)
        alloc = client.block_status("base:allocation", 0, client.size)
    assert as_tuples(dirty) == expected
    dirty_ranges = [(e.offset, e.length) for e in dirty if e.flags & STATE_DIRTY]
    assert dirty_ranges == [
        (MiB, 64 * 1024),
        (10 * MiB, 512 * 1024),
        (44 * MiB, MiB),
        (60 * MiB, 192 * 1024),
    ]
    # the zeroed dirty range reads as zero in base:allocation: a caller must store zeros
    zero_at_10m = [e for e in alloc if e.offset <= 10 * MiB < e.offset + e.length]
    assert zero_at_10m[0].flags & STATE_ZERO


def test_disabled_bitmap_on_writable_image(servers: Servers, qcow2: Path) -> None:
    run("qemu-img", "bitmap", "--disable", str(qcow2), BITMAP)
    context = f"qemu:dirty-bitmap:{BITMAP}"
    sock = servers.qemu_nbd(qcow2, "qcow2", read_only=False, bitmap=BITMAP)
    with NbdClient.connect(sock, meta_contexts=(context,)) as client:
        assert not client.read_only
        assert as_tuples(client.block_status(context, 0, SIZE)) == nbdinfo_map(sock, context)


def test_missing_bitmap_is_not_negotiated(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2", bitmap=BITMAP)
    with NbdClient.connect(
        sock, meta_contexts=("base:allocation", "qemu:dirty-bitmap:nope")
    ) as client:
        assert "qemu:dirty-bitmap:nope" not in client.meta_contexts
        with pytest.raises(NbdError, match="'qemu:dirty-bitmap:nope' was not negotiated"):
            client.block_status("qemu:dirty-bitmap:nope", 0, SIZE)
    assert NbdClient.list_meta_contexts(sock) == ["base:allocation", f"qemu:dirty-bitmap:{BITMAP}"]


def test_writes_read_back(servers: Servers, tmp_path: Path) -> None:
    image = tmp_path / "w.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(16 * MiB))
    sock = servers.qemu_nbd(image, "qcow2", read_only=False)
    payload = os.urandom(3 * MiB + 17)
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        assert not client.read_only
        assert client.can_flush and client.can_trim and client.can_write_zeroes
        client.pwrite(MiB - 3, payload)
        client.pwrite(12 * MiB, b"fua!" * 1024, fua=True)
        client.write_zeroes(2 * MiB, 4096)
        client.trim(8 * MiB, 4 * MiB)  # covers nothing written: must stay zero
        client.flush()
        expected = bytearray(16 * MiB)
        expected[MiB - 3 : MiB - 3 + len(payload)] = payload
        expected[2 * MiB : 2 * MiB + 4096] = bytes(4096)
        expected[12 * MiB : 12 * MiB + 4096] = b"fua!" * 1024
        assert client.pread(0, 16 * MiB) == bytes(expected)
    assert raw_of(image, "qcow2") == bytes(expected)


def test_write_to_read_only_export_refused(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    with NbdClient.connect(sock) as client, pytest.raises(NbdError, match="read-only"):
        client.pwrite(0, b"x")


def test_unknown_export_name(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2", export_name="disk0")
    with pytest.raises(NbdOptionError, match=r"^NBD server refused export 'other': unknown export"):
        NbdClient.connect(sock, export_name="other")
    with NbdClient.connect(sock, export_name="disk0") as client:
        assert client.size == SIZE


def test_requests_outside_the_export(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    with NbdClient.connect(sock) as client:
        with pytest.raises(NbdError, match="outside export"):
            client.pread(SIZE - 1, 2)
        with pytest.raises(NbdError, match="outside export"):
            client.pread(-1, 1)


def test_killed_server_fails_reads(servers: Servers, qcow2: Path) -> None:
    sock = servers.qemu_nbd(qcow2, "qcow2")
    client = NbdClient.connect(sock)
    client.pread(0, 4096)
    servers.kill(servers.procs[-1].pid)
    start = time.monotonic()
    with pytest.raises(NbdConnectionError):
        client.pread(0, 4096)
    assert time.monotonic() - start < 5
    client.close()
    with pytest.raises(NbdConnectionError):
        client.pread(0, 4096)


def test_connect_to_nothing(tmp_path: Path) -> None:
    with pytest.raises(NbdConnectionError, match="cannot connect to NBD server") as info:
        NbdClient.connect(str(tmp_path / "none.sock"))
    assert isinstance(info.value.__cause__, OSError)
