"""A raw image file as a disk source, for tests, the raw-image demo and benchmarks:
the engine runs against it with explicit extents, no hypervisor involved."""

from __future__ import annotations

import os
import threading

from hypersdk.providers.base import Extent


def data_extents(path: str | os.PathLike[str], end: int | None = None) -> list[Extent]:
    """The file's data extents up to ``end`` (default: its size), by SEEK_DATA/SEEK_HOLE:
    what a full export of a sparse raw image reads, and what a sparse restore wrote."""
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        limit = os.fstat(fd).st_size if end is None else end
        pos = 0
        while pos < limit:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data from pos on
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append(Extent(start, pos - start))
    finally:
        os.close(fd)
    return out


class RawImageReader:
    """Reads a raw image file with ``os.pread``; for tests, the demo and benchmarks."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._closed = threading.Event()

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:
            # Reading past the end of the file: the disk reads as zeros there.
            data += bytes(length - len(data))
        return data

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)

    def __enter__(self) -> RawImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
