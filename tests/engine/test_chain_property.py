"""Property: every generation of a forever-incremental chain restores to exactly the bytes
the disk had when it was exported, also after other generations are deleted and gc ran."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypersdk.providers.base import Extent
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes

CAPACITY = 16 * BS + 1234  # a partial last block on purpose

write = st.tuples(
    st.integers(0, CAPACITY - 1),  # offset
    st.integers(1, 3 * BS),  # length
    st.sampled_from(["random", "zero", "repeat"]),
)
generation_writes = st.lists(write, min_size=0, max_size=5)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    history=st.lists(generation_writes, min_size=2, max_size=6),
    deletions=st.sets(st.integers(0, 5), max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_generation_restores_exactly(
    tmp_path_factory,
    history,
    deletions,
    seed,  # type: ignore[no-untyped-def]
) -> None:
    tmp: Path = tmp_path_factory.mktemp("chain")
    rng = random.Random(seed)
    repo = Repository.open_or_init(tmp / "repo", block_size=BS, compression="zstd")
    img = tmp / "disk.raw"
    img.write_bytes(rng.randbytes(CAPACITY))  # data everywhere, so a lost trim shows
    expected: list[bytes] = []
    gens = []
    parent = None
    for i, writes in enumerate(history):
        disk = bytearray(img.read_bytes())
        extents: list[Extent] = []
        for offset, length, kind in writes:
            length = min(length, CAPACITY - offset)
            if kind == "zero":
                data = bytes(length)  # a trim: reported as a zero extent, never dropped
            elif kind == "repeat":
                data = (b"dup!" * (length // 4 + 1))[:length]  # dedups across blocks
            else:
                data = rng.randbytes(length)
            disk[offset : offset + length] = data
            extents.append(Extent(offset, length, zero=(kind == "zero")))
        img.write_bytes(bytes(disk))
        changed = None if i == 0 else extents
        result = export(repo, {"disk-0": img}, changed={"disk-0": changed}, parent=parent)
        parent = result.manifest
        gens.append(result.manifest)
        expected.append(bytes(disk))

    for k, m in enumerate(gens):
        assert restored_bytes(repo, m, "disk-0", tmp) == expected[k], f"generation {k}"

    for k in sorted(deletions):
        if k < len(gens):
            repo.delete_generation("vm1", gens[k].id)
    collect_garbage(repo)
    for k, m in enumerate(gens):
        if k in deletions:
            continue
        assert restored_bytes(repo, m, "disk-0", tmp) == expected[k], f"after gc, gen {k}"
    assert verify(repo, select(repo, None, None)).ok
