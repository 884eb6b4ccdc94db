"""The compact index: window scans and the streamed build agree with a per-block model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypersdk.errors import IntegrityError
from hypersdk.repository import index as index_mod
from hypersdk.repository.index import ENTRY, DiskIndex, IndexSource, build_index

BS = 65536


def cid(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "little")).digest()


def entry_of(value: int) -> bytes:
    """0: zero entry; otherwise a chunk id, some with leading or trailing zero bytes so
    that no scan may rely on the first or last byte of an entry."""
    if value == 0:
        return bytes(ENTRY)
    raw = cid(value)
    if value % 3 == 0:
        raw = bytes(31) + raw[:1] if raw[0] else bytes(31) + b"\x01"
    elif value % 3 == 1:
        raw = b"\x02" + bytes(31)
    return raw


def make_index(values: list[int]) -> DiskIndex:
    return DiskIndex(len(values) * BS - 7, BS, bytearray(b"".join(entry_of(v) for v in values)))


sparse = st.lists(st.integers(0, 9).map(lambda v: v if v > 6 else 0), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(values=sparse)
def test_window_scan_matches_a_per_block_scan(values: list[int]) -> None:
    index = make_index(values)
    expected = [b for b, v in enumerate(values) if v]
    assert list(index.nonzero_blocks()) == expected
    assert [b for b, _ in index.chunks()] == expected
    assert all(c == entry_of(values[b]) for b, c in index.chunks())
    assert index.zero_blocks() == len(values) - len(expected)


def runs_of(blocks: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


run = st.tuples(st.integers(0, 119), st.integers(1, 30))  # first block, length


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    nblocks=st.integers(1, 120),
    has_base=st.booleans(),
    base_values=st.lists(st.integers(0, 9).map(lambda v: v if v > 4 else 0), min_size=120),
    read_runs=st.lists(run, max_size=6),
    zero_runs=st.lists(run, max_size=4),
    new_values=st.lists(st.integers(0, 9), min_size=120, max_size=120),
    piece=st.integers(1, 9),
)
def test_streamed_build_equals_patching_the_whole_index(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nblocks: int,
    has_base: bool,
    base_values: list[int],
    read_runs: list[tuple[int, int]],
    zero_runs: list[tuple[int, int]],
    new_values: list[int],
    piece: int,
) -> None:
    # Tiny pieces, so that runs cross piece boundaries in every way.
    monkeypatch.setattr(index_mod, "_PIECE", piece)
    monkeypatch.setattr(index_mod, "_ZERO_PIECE_BYTES", bytes(piece * ENTRY))
    read = {b for f, n in read_runs for b in range(f, f + n) if b < nblocks}
    zero = {b for f, n in zero_runs for b in range(f, f + n) if b < nblocks} - read
    capacity = nblocks * BS - 7
    model = make_index(base_values[:nblocks]) if has_base else DiskIndex.empty(capacity, BS)
    source = None
    if has_base:
        blob = model.encode()
        (tmp_path / "base.idx").write_bytes(blob)
        source = IndexSource(tmp_path / "base.idx", hashlib.sha256(blob).hexdigest(), "base")
    entries = b"".join(entry_of(new_values[i]) for i in range(len(read)))
    for b in zero:
        model.set(b, None)
    for i, b in enumerate(sorted(read)):
        model.entries[b * ENTRY : (b + 1) * ENTRY] = entry_of(new_values[i])
    dest = tmp_path / "new.idx"
    dest.unlink(missing_ok=True)
    built = build_index(dest, capacity, BS, source, runs_of(read), entries, runs_of(zero))
    blob = dest.read_bytes()
    assert blob == model.encode()
    assert built.sha256 == hashlib.sha256(blob).hexdigest()
    assert built.blocks == nblocks
    assert built.zero_blocks == model.zero_blocks()


def test_a_damaged_base_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    base = make_index([7, 0, 8, 0] * 10)
    blob = bytearray(base.encode())
    good = hashlib.sha256(blob).hexdigest()
    blob[40] ^= 1  # an entry: only the checksums can tell
    (tmp_path / "base.idx").write_bytes(blob)
    dest = tmp_path / "new.idx"
    with pytest.raises(IntegrityError, match="does not match the checksum in the manifest"):
        build_index(
            dest,
            base.capacity,
            BS,
            IndexSource(tmp_path / "base.idx", good, "base"),
            [(1, 2)],
            cid(1),
            [],
        )
    assert not dest.exists()
    # A base of another disk geometry is refused before anything is copied.
    with pytest.raises(IntegrityError, match="capacity or block size"):
        IndexSource(tmp_path / "base.idx", good, "base").check_header(base.capacity + BS, BS)


def test_holes_in_the_base_read_as_zeros_and_damage_there_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod, "_PIECE", 1024)  # 32 KiB pieces: most are holes
    monkeypatch.setattr(index_mod, "_ZERO_PIECE_BYTES", bytes(1024 * ENTRY))
    nblocks = 20000
    capacity = nblocks * BS
    first = tmp_path / "first.idx"
    built = build_index(first, capacity, BS, None, [(3, 5), (15000, 15001)], cid(1) * 3, [])
    blob = first.read_bytes()
    assert os.stat(first).st_blocks * 512 < len(blob) // 4  # written sparse
    model = DiskIndex.decode(blob)
    assert list(model.nonzero_blocks()) == [3, 4, 15000]
    source = IndexSource(first, built.sha256, "first")
    second = tmp_path / "second.idx"
    build_index(second, capacity, BS, source, [(9000, 9001)], cid(2), [(4, 5)])
    model.set(9000, cid(2))
    model.set(4, None)
    assert second.read_bytes() == model.encode()

    # A byte written in place, mid-piece, inside what was a hole: the file stays sparse
    # around it, and the piece must still be read.
    with open(first, "r+b") as f:
        f.seek(32 + 12100 * ENTRY)
        f.write(b"\x01")
    with pytest.raises(IntegrityError, match="does not match the checksum"):
        build_index(tmp_path / "third.idx", capacity, BS, source, [], b"", [])
    assert not (tmp_path / "third.idx").exists()
