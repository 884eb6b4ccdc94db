"""Block status is walked by the extents the server returned, not by the request."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hypersdk.errors import NbdError
from hypersdk.providers.base import Extent
from hypersdk.providers.qemu import _extents


@dataclass
class Ext:
    offset: int
    length: int
    flags: int


class ShortAnswers:
    """A server that answers at most ``step`` bytes per request."""

    def __init__(self, maps: dict[str, list[Ext]], step: int) -> None:
        self.maps = maps
        self.step = step
        self.calls = 0

    def block_status(self, context: str, offset: int, length: int) -> list[Ext]:
        self.calls += 1
        end = min(offset + length, offset + self.step)
        out = []
        for e in self.maps[context]:
            s, t = max(e.offset, offset), min(e.offset + e.length, end)
            if t > s:
                out.append(Ext(s, t - s, e.flags))
        return out


def test_changed_splits_dirty_by_allocation() -> None:
    source = ShortAnswers(
        {
            "base:allocation": [Ext(0, 100, 0), Ext(100, 100, 3), Ext(200, 56, 0)],
            "qemu:dirty-bitmap:b": [Ext(0, 50, 0), Ext(50, 100, 1), Ext(150, 106, 0)],
        },
        step=30,
    )
    assert _extents.changed(source, "b", 256) == [Extent(50, 50), Extent(100, 50, zero=True)]
    assert source.calls > 5
    assert _extents.allocation(source, 256) == [
        Extent(0, 100),
        Extent(100, 100, zero=True),
        Extent(200, 56),
    ]


def test_no_progress_is_an_error() -> None:
    source = ShortAnswers({"base:allocation": [Ext(0, 10, 0)]}, step=30)
    with pytest.raises(NbdError):
        _extents.allocation(source, 256)
