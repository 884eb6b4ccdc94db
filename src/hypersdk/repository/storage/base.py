"""The storage interface a repository is kept in, in the spirit of restic's backends.

A backend stores opaque objects under keys: ``/``-separated relative names such as
``data/ab/ab12...`` or ``vms/<vm>/generations/<id>.json`` (``layout.Keys`` builds them).
It knows nothing of chunks, indexes or manifests; the repository above it holds the
commit protocol. Two backends: ``local.LocalStorage`` (a folder, today's layout) and
``s3.S3Storage`` (``s3://bucket/prefix``).

Every method raises ``FileNotFoundError`` for a missing object and ``OSError`` (or a
subclass) for any other failure of the storage underneath; the repository turns those
into its own errors, naming the object.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ChunkSink(Protocol):
    """New chunk objects of one generation, written as they are produced.

    ``put`` may return before the object is stored (a bounded number of uploads in
    flight); ``publish`` returns once every object is stored and named, and re-raises the
    first failure. ``discard`` drops what is not yet named. Thread-safe.
    """

    def put(self, key: str, parts: Sequence[bytes]) -> None:
        """Store the object whose bytes are ``parts`` joined."""
        ...

    def staged(self, key: str) -> bool: ...

    def publish(self) -> None: ...

    def discard(self) -> None: ...


class Storage(Protocol):
    location: str  # what messages name: a folder path or an s3:// URL
    local: bool  # a folder on this host (fd based fast paths apply)

    def get(self, key: str) -> bytes:
        """The whole object."""
        ...

    def get_into(self, key: str, buf: bytearray) -> bytes | memoryview:
        """The whole object, read into ``buf`` where the storage can (a view of its first
        bytes, valid until ``buf`` is reused), else as new bytes."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        ...

    def size(self, key: str) -> int: ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Create the object unless it exists (atomically: of two racing creators one
        wins); True if this call created it. Durable when it returns."""
        ...

    def put_atomic(self, key: str, data: bytes) -> None:
        """Create or replace a small object: readers see the old or the whole new one.
        Durable, with everything stored before it, when it returns."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; FileNotFoundError if it is absent (locally; S3 does not
        tell)."""
        ...

    def delete_folder(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (which ends with ``/``)."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder: ends with ``/``)."""
        ...

    def folders(self, prefix: str) -> builtins.list[str]:
        """The names of the immediate sub-folders of ``prefix`` (which ends with ``/``)."""
        ...

    def chunks(self) -> ChunkSink:
        """A sink for one generation's new chunks."""
        ...

    def write_big(self, key: str, build: Callable[[Path], object]) -> None:
        """Store an object that ``build`` writes into a new private file at the path it
        is given (an index; possibly GiBs). Not durable before ``put_atomic`` or
        ``sync`` (local) returns."""
        ...

    def fetch(self, key: str) -> AbstractContextManager[Path]:
        """A local file with the object's bytes, for fd-based streaming, valid within
        the context: the object itself (local) or a private temp copy (remote)."""
        ...

    def sync(self) -> None:
        """Make every object written so far durable (local: one syncfs)."""
        ...

    def lock(
        self, key: str, *, shared: bool, what: str
    ) -> AbstractContextManager[dict[str, object]]:
        """Hold the lock ``key`` without waiting (LockedError naming its holder); yields
        the record of a dead previous holder that was taken over, if any."""
        ...
