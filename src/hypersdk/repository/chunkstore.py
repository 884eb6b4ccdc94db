"""Opaque chunk objects stored by id, one file each. Knows nothing of disks or generations.

New chunks go through a ``ChunkBatch``: each object is written to a temp file beside its
final name, and names are given in batches only after a ``syncfs`` made the batch's bytes
durable. So a power cut can never leave a chunk's final name over bytes that never reached
the disk (the name would otherwise be reused later, because it exists).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from hypersdk.repository.files import make_private_dirs, sync_filesystem, temp_name, write_file
from hypersdk.repository.layout import Layout

# A batch is named once this many bytes (or files) wait: bounded memory (paths only) and
# a bounded amount of work lost to a crash; large enough that syncfs calls stay few.
BATCH_BYTES = 256 * 1024 * 1024
BATCH_FILES = 4096


class ChunkStore:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def has(self, chunk_id: bytes) -> bool:
        """Whether a file has the chunk's name; says nothing of its content."""
        return self._layout.chunk(chunk_id).exists()

    def stage(self) -> ChunkBatch:
        """A batch of new chunks for one generation (see ``ChunkBatch``)."""
        return ChunkBatch(self._layout)

    def get(self, chunk_id: bytes) -> bytes:
        """The sealed object; raises FileNotFoundError when it is missing."""
        with open(self._layout.chunk(chunk_id), "rb") as f:
            return f.read()

    def read(self, chunk_id: bytes) -> bytes | None:
        """The sealed object, or None when no file has its name."""
        try:
            return self.get(chunk_id)
        except FileNotFoundError:
            return None

    def size(self, chunk_id: bytes) -> int:
        return self._layout.chunk(chunk_id).stat().st_size

    def all(self) -> Iterator[tuple[bytes, Path]]:
        """Every stored chunk id with its path; skips names that are not chunk ids."""
        if not self._layout.data.exists():
            return
        for sub in os.scandir(self._layout.data):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                name = entry.name
                if len(name) == 64 and name.startswith(sub.name):
                    try:
                        yield bytes.fromhex(name), Path(entry.path)
                    except ValueError:
                        continue

    def leftovers(self) -> Iterator[Path]:
        """Temp files of interrupted writes (``<name>.<random>.tmp`` beside the chunks)."""
        if not self._layout.data.exists():
            return
        for sub in os.scandir(self._layout.data):
            if sub.is_dir():
                for entry in os.scandir(sub.path):
                    if entry.name.endswith(".tmp"):
                        yield Path(entry.path)

    def delete(self, chunk_id: bytes) -> int:
        path = self._layout.chunk(chunk_id)
        size = path.stat().st_size
        path.unlink()
        return size


class ChunkBatch:
    """New chunks of one generation: temp files first, names only after their bytes.

    ``put`` writes ``<id>.<random>.tmp`` in the chunk's own folder (not the shared tmp/:
    parallel writers then create inodes in 256 folders instead of contending for one
    folder's lock; measured: ext4 inode allocation was the largest kernel cost of a full
    export). Once ``BATCH_BYTES`` wait, one ``syncfs`` makes them durable and they are
    renamed to their final names. ``publish`` does the same for the rest; the caller
    then syncs again so the renames are durable before a manifest names the chunks.
    Thread-safe: the export's workers share one batch.
    """

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._lock = threading.Lock()  # guards the lists below
        self._naming = threading.Lock()  # one syncfs + rename pass at a time
        self._waiting: list[tuple[Path, Path]] = []
        self._bytes = 0
        self._ids: set[bytes] = set()  # written by this batch, not yet named

    def staged(self, chunk_id: bytes) -> bool:
        """Whether this batch holds the chunk under a temp name (not named yet)."""
        with self._lock:
            return chunk_id in self._ids

    def put(self, chunk_id: bytes, sealed: bytes) -> None:
        path = self._layout.chunk(chunk_id)
        tmp = temp_name(path, path.parent)
        try:
            write_file(tmp, sealed, durable=False)
        except FileNotFoundError:
            make_private_dirs(path.parent)
            write_file(tmp, sealed, durable=False)
        with self._lock:
            self._waiting.append((tmp, path))
            self._ids.add(chunk_id)
            self._bytes += len(sealed)
            full = self._bytes >= BATCH_BYTES or len(self._waiting) >= BATCH_FILES
        # One worker names a full batch while the others keep writing the next one.
        if full and self._naming.acquire(blocking=False):
            try:
                self._name_waiting()
            finally:
                self._naming.release()

    def publish(self) -> None:
        """Make every chunk of the batch durable and named. The renames themselves are
        durable only after the caller's next syncfs/fsync."""
        with self._naming:
            self._name_waiting()

    def discard(self) -> None:
        """Remove the temp files not yet named (after a failed export)."""
        with self._naming, self._lock:
            for tmp, _ in self._waiting:
                tmp.unlink(missing_ok=True)
            self._waiting.clear()
            self._ids.clear()
            self._bytes = 0

    def _name_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._bytes = 0
        if not batch:
            return
        sync_filesystem(self._layout.root)  # the bytes first ...
        for tmp, path in batch:
            os.replace(tmp, path)  # ... then the names (a bad old file is replaced)
        with self._lock:
            for _, path in batch:
                self._ids.discard(bytes.fromhex(path.name))
