"""Opaque chunk objects stored by id, one object each. Knows nothing of disks or
generations.

New chunks go through a ``ChunkBatch`` over the storage's chunk sink: locally each object
is written to a temp file beside its final name, and names are given in batches only
after a ``syncfs`` made the batch's bytes durable, so a power cut can never leave a
chunk's final name over bytes that never reached the disk (the name would otherwise be
reused later, because it exists). On S3 an object exists only once its PUT completed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from hypersdk.repository.layout import Keys
from hypersdk.repository.storage import Storage
from hypersdk.repository.storage.base import ChunkSink
from hypersdk.repository.storage.local import LocalStorage


def _chunk_id(key: str) -> bytes | None:
    """The id a key under ``data/`` names, or None for anything else there."""
    folder, _, name = key.removeprefix(Keys.data).rpartition("/")
    if len(name) != 64 or not name.startswith(folder) or len(folder) != 2:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None


class ChunkStore:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def has(self, chunk_id: bytes) -> bool:
        """Whether an object has the chunk's name; says nothing of its content."""
        try:
            self._storage.size(Keys.chunk(chunk_id))
        except FileNotFoundError:
            return False
        return True

    def stage(self) -> ChunkBatch:
        """A batch of new chunks for one generation (see ``ChunkBatch``)."""
        return ChunkBatch(self._storage.chunks())

    def get(self, chunk_id: bytes) -> bytes:
        """The sealed object; raises FileNotFoundError when it is missing."""
        return self._storage.get(Keys.chunk(chunk_id))

    def get_into(self, chunk_id: bytes, buf: bytearray) -> bytes | memoryview:
        """``get`` into ``buf`` where the storage can (see ``Storage.get_into``)."""
        return self._storage.get_into(Keys.chunk(chunk_id), buf)

    def read(self, chunk_id: bytes) -> bytes | None:
        """The sealed object, or None when no object has its name."""
        try:
            return self.get(chunk_id)
        except FileNotFoundError:
            return None

    def size(self, chunk_id: bytes) -> int:
        return self._storage.size(Keys.chunk(chunk_id))

    def ids(self, first: int | None = None) -> Iterator[tuple[bytes, int]]:
        """Every stored chunk id with its stored size (only those whose first byte is
        ``first``, one folder or prefix of the store, when given); skips names that are
        not ids."""
        prefix = Keys.data if first is None else f"{Keys.data}{first:02x}/"
        for info in self._storage.list(prefix):
            cid = _chunk_id(info.key)
            if cid is not None:
                yield cid, info.size

    def all(self) -> Iterator[tuple[bytes, Path]]:
        """Every chunk id with its file (a local repository's)."""
        if not isinstance(self._storage, LocalStorage):
            raise TypeError("chunk files exist only in a local repository")
        for cid, _ in self.ids():
            yield cid, self._storage.path(Keys.chunk(cid))

    def leftovers(self) -> Iterator[PurePosixPath]:
        """Keys of interrupted writes (``<name>.<random>.tmp`` beside the chunks)."""
        for info in self._storage.list(Keys.data):
            if info.key.endswith(".tmp"):
                yield PurePosixPath(info.key)

    def delete(self, chunk_id: bytes) -> None:
        self._storage.delete(Keys.chunk(chunk_id))


class ChunkBatch:
    """New chunks of one generation, by id (the storage's ``ChunkSink`` by key).
    Thread-safe: the export's workers share one batch."""

    def __init__(self, sink: ChunkSink) -> None:
        self._sink = sink

    def staged(self, chunk_id: bytes) -> bool:
        """Whether this batch holds the chunk but has not named (stored) it yet."""
        return self._sink.staged(Keys.chunk(chunk_id))

    def put(self, chunk_id: bytes, sealed: Sequence[bytes]) -> None:
        """Store a sealed chunk, given as its codec's ``seal_parts``."""
        self._sink.put(Keys.chunk(chunk_id), sealed)

    def publish(self) -> None:
        """Make every chunk of the batch stored and named (locally: durable after the
        caller's next sync)."""
        self._sink.publish()

    def discard(self) -> None:
        """Drop what is not yet named (after a failed export)."""
        self._sink.discard()
