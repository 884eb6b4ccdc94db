"""The /folder reader against the lab's real HTTPS server: connections are kept and
reused (one TLS handshake per thread, not per range), planned consecutive blocks are
fetched with few large ranges, and what the coalescing hands out is byte for byte the
flat file, for random block sets and any order of reads."""

from __future__ import annotations

import random
import ssl
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from hypersdk.engine.plan import READ, plan_blocks
from hypersdk.lab import VcsimLab
from hypersdk.providers.base import Extent
from hypersdk.providers.vsphere import _reader
from tests.vsphere.conftest import KiB, MiB, flat

VM = "/DC0/vm/web"  # 64 MiB


def _read_like_the_engine(
    reader: _reader.HttpRangeReader, blocks: list[int], block: int, threads: int, cap: int
) -> dict[int, bytes]:
    """``threads`` workers, blocks submitted in order, a window of 2 * threads."""
    got: dict[int, bytes] = {}
    window: deque[tuple[int, Future[bytes]]] = deque()

    def length(b: int) -> int:
        return min(block, cap - b * block)

    with ThreadPoolExecutor(threads) as pool:
        for b in blocks:
            window.append((b, pool.submit(reader.pread, b * block, length(b))))
            if len(window) >= 2 * threads:
                n, fut = window.popleft()
                got[n] = fut.result()
        while window:
            n, fut = window.popleft()
            got[n] = fut.result()
    return got


def test_one_tls_handshake_per_thread_and_large_ranges(
    lab: VcsimLab, provider_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for offset in range(0, 64 * MiB, 8 * MiB):
        lab.write(VM, offset, length=4 * MiB, seed=offset)
    content = flat(lab, VM)
    handshakes = 0
    real = ssl.SSLSocket.do_handshake

    def counting(self: ssl.SSLSocket, *args: Any) -> None:
        nonlocal handshakes
        handshakes += 1
        real(self, *args)

    monkeypatch.setattr(ssl.SSLSocket, "do_handshake", counting)
    provider = provider_for(VM)
    provider.pool = 3
    with provider.open_backup(None) as session:
        before = handshakes  # the SOAP login's are not the reader's
        (disk,) = session.disks
        plan = plan_blocks(disk.capacity_bytes, MiB, disk.changed)
        blocks = list(plan.blocks(READ))
        assert disk.changed is None and len(blocks) == 64  # no CBT: every block
        got = _read_like_the_engine(disk.reader, blocks, MiB, 3, disk.capacity_bytes)
        assert all(got[b] == content[b * MiB : (b + 1) * MiB] for b in blocks)
        reader = disk.reader
        # 8 MiB ranges (8), not one per block (64); no byte fetched twice
        assert reader.requests <= 12 and reader.bytes == 64 * MiB
        assert handshakes - before <= 3  # at most one per thread, none per range
        assert session._client.connections == handshakes - before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coalesced_reads_are_the_flat_file_for_random_block_sets(
    lab: VcsimLab, provider_for: Any, seed: int
) -> None:
    rng = random.Random(seed)
    for _ in range(6):
        lab.write(VM, rng.randrange(0, 60 * MiB), length=rng.randrange(1, 4 * MiB), seed=seed)
    content = flat(lab, VM)
    cap = len(content)
    block = 64 * KiB
    # Random extents: data ones (any offsets, adjacent or not) and zero ones, which
    # the plan reads only where they cover a block in part.
    extents = []
    for _ in range(40):
        off = rng.randrange(0, cap - 1)
        ext = Extent(off, rng.randrange(1, min(cap - off, 3 * MiB) + 1), zero=rng.random() < 0.3)
        extents.append(ext)
    extents.sort(key=lambda e: e.offset)
    planned = list(plan_blocks(cap, block, extents).blocks(READ))
    with provider_for(VM).open_backup(None) as session:
        (disk,) = session.disks
        client = _reader.make_client(
            session._conn.session_cookie(),
            ssl_context=session._conn.ssl_context,
            pool=4,
        )
        with client:
            reader = _reader.HttpRangeReader(
                client, disk.reader.url, cap, disk.key, extents=extents, segment=512 * KiB
            )
            got = _read_like_the_engine(reader, planned, block, 4, cap)
            for b in planned:
                assert got[b] == content[b * block : b * block + block], f"block {b}"
            assert reader.requests < len(planned)  # coalesced
            # blocks outside the plan and reads off the grid: read as asked, exact too
            for _ in range(20):
                off = rng.randrange(0, cap - 1)
                n = rng.randrange(1, 200 * KiB)
                assert reader.pread(off, n) == content[off : off + n] + bytes(max(0, off + n - cap))
            assert reader._segments == {}  # every segment handed out and let go


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_plan_without_the_partial_blocks(seed: int) -> None:
    """The runs with the blocks read in parts cut out are exactly the planned blocks
    minus those."""
    rng = random.Random(seed)
    cap = rng.randrange(1, 300) * 4096 + rng.randrange(0, 4096)
    block = 4096
    extents = [
        Extent(off, rng.randrange(1, 20000), zero=rng.random() < 0.3)
        for off in sorted(rng.randrange(0, cap - 1) for _ in range(15))
    ]
    extents = [Extent(e.offset, min(e.length, cap - e.offset), e.zero) for e in extents]
    whole = _reader._Plan(extents, cap, block)
    planned = {b for a, z in zip(whole.starts, whole.ends, strict=True) for b in range(a, z)}
    skip = set(rng.sample(sorted(planned), len(planned) // 3)) | {rng.randrange(0, 400)}
    cut = _reader._Plan(extents, cap, block, skip)
    left = {b for a, z in zip(cut.starts, cut.ends, strict=True) for b in range(a, z)}
    assert left == planned - skip
    assert all(a < z for a, z in zip(cut.starts, cut.ends, strict=True))
    assert all(z < a for z, a in zip(cut.ends, cut.starts[1:], strict=False))  # separate runs


def test_partial_blocks_are_never_fetched_whole(lab: VcsimLab, provider_for: Any) -> None:
    """Blocks the engine patches (reads in parts) stay out of the segments: a run around
    them is fetched in two ranges, and only the asked parts of them cross the wire."""
    content = lab.write(VM, 0, length=16 * MiB, seed=9) + bytes(48 * MiB)
    block = 256 * KiB
    with provider_for(VM).open_backup(None) as session:
        (disk,) = session.disks
        client = _reader.make_client(
            session._conn.session_cookie(), ssl_context=session._conn.ssl_context, pool=2
        )
        with client:
            extents = [Extent(0, 16 * MiB)]
            reader = _reader.HttpRangeReader(
                client, disk.reader.url, disk.capacity_bytes, disk.key, extents=extents
            )
            partial = [5, 6, 30]
            reader.partial_blocks(block, partial)
            # a part read first, on a 64 KiB grid, is not taken for the block size
            assert (
                reader.pread(6 * block + 64 * KiB, 64 * KiB)
                == content[6 * block + 64 * KiB : 6 * block + 128 * KiB]
            )
            whole = [b for b in range(64) if b not in partial]
            got = _read_like_the_engine(reader, whole, block, 2, disk.capacity_bytes)
            assert all(got[b] == content[b * block : (b + 1) * block] for b in whole)
            parts = [(5 * block + 100, 4000), (6 * block, 1), (31 * block - 10, 10)]
            for off, n in parts:
                assert reader.pread(off, n) == content[off : off + n]
            assert reader.bytes == len(whole) * block + sum(n for _, n in parts) + 64 * KiB
            assert reader._segments == {}
            assert reader.requests <= 4 + 4  # runs in 8 MiB segments, and each part
