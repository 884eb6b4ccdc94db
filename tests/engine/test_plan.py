import pytest

from hypersdk.engine.plan import KEEP, READ, ZERO, plan_blocks
from hypersdk.errors import ProviderError
from hypersdk.providers.base import Extent

BS = 100


def actions(capacity: int, changed: list[Extent] | None) -> list[int]:
    return list(plan_blocks(capacity, BS, changed).actions)


def test_none_reads_everything() -> None:
    assert actions(250, None) == [READ, READ, READ]


def test_untouched_blocks_are_kept() -> None:
    assert actions(400, []) == [KEEP] * 4
    assert actions(400, [Extent(150, 10)]) == [KEEP, READ, KEEP, KEEP]
    assert actions(400, [Extent(99, 2)]) == [READ, READ, KEEP, KEEP]


def test_zero_extents_record_zero_only_for_whole_blocks() -> None:
    # block 1 and 2 wholly zero; block 0 and 3 partly: must be read, never skipped
    assert actions(400, [Extent(50, 300, zero=True)]) == [READ, ZERO, ZERO, READ]
    # a zero extent ending at a partial last block covers it
    assert actions(250, [Extent(200, 50, zero=True)]) == [KEEP, KEEP, ZERO]


def test_data_wins_over_zero_in_the_same_block() -> None:
    got = actions(300, [Extent(100, 100, zero=True), Extent(150, 1)])
    assert got == [KEEP, READ, KEEP]


def test_extent_outside_the_disk_is_refused() -> None:
    with pytest.raises(ProviderError, match="outside the disk"):
        plan_blocks(300, BS, [Extent(250, 100)])
