"""The set of chunk ids gc must keep, with memory bounded for millions of chunks.

gc marks every chunk that an index references, then sweeps the chunk store. Held as a
Python set, 10^7 ids take over a gigabyte. Here the marks are spilled to disk in 256
partitions by the id's first byte, the same split as the chunk store's folders (and
object prefixes), so the sweep loads one partition at a time: memory is a few MiB of
buffers plus 1/256 of the marks, whatever the repository's size.

Chunk ids are uniformly spread (SHA-256 or HMAC-SHA256), so partitions are even. The
spill files live in a private temporary folder inside the repository's ``tmp`` (on the
same disk, never in a world-readable place) and are removed on close.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from hypersdk.repository.index import ENTRY, DiskIndex

PARTITIONS = 256
_FLUSH_BYTES = 4 << 20  # buffered marks before they go to the partition files


class MarkSet:
    def __init__(self, tmp_dir: Path) -> None:
        tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="gc-marks-", dir=tmp_dir))
        self._buffers = [bytearray() for _ in range(PARTITIONS)]
        self._buffered = 0
        self.added = 0  # marks added, duplicates included

    def add(self, chunk_id: bytes) -> None:
        self._buffers[chunk_id[0]] += chunk_id
        self._buffered += ENTRY
        self.added += 1
        if self._buffered >= _FLUSH_BYTES:
            self.flush()

    def add_index(self, index: DiskIndex) -> None:
        """Mark every chunk the index references."""
        for _, chunk_id in index.chunks():
            self.add(chunk_id)

    def flush(self) -> None:
        for first, buf in enumerate(self._buffers):
            if buf:
                with open(self._dir / f"{first:02x}", "ab") as f:
                    f.write(buf)
                buf.clear()
        self._buffered = 0

    def partition(self, first: int) -> set[bytes]:
        """The marked ids whose first byte is ``first``."""
        self.flush()
        path = self._dir / f"{first:02x}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return set()
        return {data[i : i + ENTRY] for i in range(0, len(data), ENTRY)}

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MarkSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
