"""Turn NBD block status into the engine's ``Extent`` lists.

Full export: every ``base:allocation`` extent; ranges that read as zeros (``STATE_ZERO``)
are marked ``zero=True`` so the engine records them without reading.
Incremental export: the dirty ranges of ``qemu:dirty-bitmap:<name>`` intersected with
``base:allocation``: a dirty range that reads as zeros (zeroed or trimmed by the guest)
becomes a zero extent, never dropped, or the parent's old data would survive.

Block status is walked by the extents the server actually returned, never by the size
that was asked for: a server may answer any prefix of the request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from hypersdk.errors import NbdError
from hypersdk.providers.base import Extent

BASE_ALLOCATION = "base:allocation"
STATE_ZERO = 2  # base:allocation: the range reads as zeros
STATE_DIRTY = 1  # qemu:dirty-bitmap:*: the range changed
# Asked of the source at a time. The NBD client splits it into its largest requests
# (4 GiB - 1 MiB: lengths are 32-bit), several in flight; 64 of them keep that pipeline
# full (a 62 TiB disk is 248 windows) while the extents of one window stay few.
REQUEST_LIMIT = 64 * ((1 << 32) - (1 << 20))


class _StatusExtent(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def flags(self) -> int: ...


class BlockStatusSource(Protocol):
    def block_status(self, context: str, offset: int, length: int) -> Sequence[_StatusExtent]: ...


def bitmap_context(bitmap: str) -> str:
    return f"qemu:dirty-bitmap:{bitmap}"


def walk(
    source: BlockStatusSource, context: str, offset: int, length: int
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(offset, length, flags)`` covering ``[offset, offset + length)`` exactly."""
    pos, end = offset, offset + length
    while pos < end:
        got = source.block_status(context, pos, min(end - pos, REQUEST_LIMIT))
        advanced = pos
        for ext in got:
            start = max(ext.offset, advanced)
            stop = min(ext.offset + ext.length, end)
            if ext.offset > advanced:
                raise NbdError(f"{context}: block status skipped {advanced}..{ext.offset}")
            if stop > start:
                yield start, stop - start, ext.flags
                advanced = stop
            if advanced >= end:
                break
        if advanced <= pos:
            raise NbdError(f"{context}: block status at offset {pos} did not advance")
        pos = advanced


def _append(out: list[Extent], offset: int, length: int, zero: bool) -> None:
    if out and out[-1].end == offset and out[-1].zero == zero:
        last = out.pop()
        out.append(Extent(last.offset, last.length + length, zero))
    else:
        out.append(Extent(offset, length, zero))


def allocation(source: BlockStatusSource, size: int) -> list[Extent]:
    """Every byte of the disk, split into data extents and zero extents."""
    out: list[Extent] = []
    for off, length, flags in walk(source, BASE_ALLOCATION, 0, size):
        _append(out, off, length, bool(flags & STATE_ZERO))
    return out


def dirty(source: BlockStatusSource, bitmap: str, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, length, flags in walk(source, bitmap_context(bitmap), 0, size):
        if flags & STATE_DIRTY:
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((off, length))
    return out


def changed(source: BlockStatusSource, bitmap: str, size: int) -> list[Extent]:
    """Dirty ranges, each split by ``base:allocation`` into data and zero extents."""
    out: list[Extent] = []
    for d_off, d_len in dirty(source, bitmap, size):
        for off, length, flags in walk(source, BASE_ALLOCATION, d_off, d_len):
            _append(out, off, length, bool(flags & STATE_ZERO))
    return out


def session_extents(
    source: BlockStatusSource, size: int, bitmap: str | None, audit: bool = False
) -> tuple[list[Extent], list[Extent] | None]:
    """(changed, reported) of a backup session's export, as ``FrozenDisk`` holds them:
    the dirty extents since ``bitmap`` (an incremental) or the allocated ones (a full);
    with ``audit`` and a bitmap, the allocated ones in ``changed`` and the dirty ones in
    ``reported`` (the CBT audit)."""
    if not bitmap:
        return allocation(source, size), None
    since = changed(source, bitmap, size)
    if audit:
        return allocation(source, size), since
    return since, None


def dirty_bytes(source: BlockStatusSource, bitmap: str, size: int) -> int:
    return sum(length for _, length in dirty(source, bitmap, size))
