"""A repository in a local folder: one file per object, named by its key.

The fast paths of a local disk stay behind the interface: new chunks are written as temp
files and named in batches after one ``syncfs`` (``_LocalChunks``), ``sync`` is one
``syncfs`` for everything written so far, ``fetch`` hands out the object's own file (so
an index streams with ``SEEK_DATA`` and ``pread``), and locks are ``flock(2)`` locks that
die with their process.
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from hypersdk.repository.files import (
    create_exclusive,
    make_private_dirs,
    sync_filesystem,
    temp_name,
    write_atomic,
    write_file,
)
from hypersdk.repository.locks import hold
from hypersdk.repository.storage.base import ObjectInfo

# A batch is named once this many bytes (or files) wait: bounded memory (paths only) and
# a bounded amount of work lost to a crash; large enough that syncfs calls stay few.
BATCH_BYTES = 256 * 1024 * 1024
BATCH_FILES = 4096


class LocalStorage:
    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self._tmp = root / "tmp"

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes:
        with open(self.root / key, "rb") as f:
            return f.read()

    def get_into(self, key: str, buf: bytearray) -> bytes | memoryview:
        """The object, read into ``buf`` when it fits (a view of its first bytes, valid
        until ``buf`` is reused): no new buffer per object on a restore's hot path. A
        larger object is returned as new bytes. FileNotFoundError when it is missing."""
        with open(self.root / key, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size > len(buf):
                return f.read()
            view = memoryview(buf)
            got = 0
            while got < size:
                n = f.readinto(view[got:size])
                if not n:
                    break  # shrank while read: the caller's checks reject the short object
                got += n
            return view[:got]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        fd = os.open(self.root / key, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        return (self.root / key).stat().st_size

    def put_new(self, key: str, data: bytes) -> bool:
        path = self.root / key
        make_private_dirs(path.parent)
        make_private_dirs(self._tmp)
        return create_exclusive(path, data, self._tmp)

    def put_atomic(self, key: str, data: bytes) -> None:
        path = self.root / key
        make_private_dirs(path.parent)
        make_private_dirs(self._tmp)
        write_atomic(path, data, self._tmp)

    def delete(self, key: str) -> None:
        (self.root / key).unlink()  # durable at the next sync (gc removes thousands)

    def delete_folder(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        top = self.root / folder if folder else self.root
        if not top.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else f"{rel}/"
            for name in sorted(filenames):
                key = base + name
                if key.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(dirpath, name)).st_size
                    except FileNotFoundError:
                        continue  # removed while listed
                    yield ObjectInfo(key, size)

    def folders(self, prefix: str) -> builtins.list[str]:
        top = self.root / prefix
        if not top.is_dir():
            return []
        return sorted(e.name for e in os.scandir(top) if e.is_dir())

    def chunks(self) -> _LocalChunks:
        return _LocalChunks(self.root)

    def write_big(self, key: str, build: Callable[[Path], object]) -> None:
        path = self.root / key
        make_private_dirs(path.parent)
        make_private_dirs(self._tmp)
        tmp = temp_name(path, self._tmp)
        build(tmp)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def fetch(self, key: str) -> AbstractContextManager[Path]:
        return nullcontext(self.root / key)

    def sync(self) -> None:
        # One syncfs makes the last renames and every index durable before a manifest
        # names them; measured 2x faster than an fsync per file on 2 cores (see docs).
        sync_filesystem(self.root)

    @contextmanager
    def lock(self, key: str, *, shared: bool, what: str) -> Iterator[dict[str, object]]:
        with hold(self.root / key, shared=shared, what=what) as stale:
            yield stale


class _LocalChunks:
    """New chunks of one generation: temp files first, names only after their bytes.

    ``put`` writes ``<id>.<random>.tmp`` in the chunk's own folder (not the shared tmp/:
    parallel writers then create inodes in 256 folders instead of contending for one
    folder's lock; measured: ext4 inode allocation was the largest kernel cost of a full
    export). Once ``BATCH_BYTES`` wait, one ``syncfs`` makes them durable and they are
    renamed to their final names. ``publish`` does the same for the rest; the caller
    then syncs again so the renames are durable before a manifest names the chunks.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()  # guards the lists below
        self._naming = threading.Lock()  # one syncfs + rename pass at a time
        self._waiting: list[tuple[Path, Path, str]] = []
        self._bytes = 0
        self._keys: set[str] = set()  # written by this batch, not yet named

    def staged(self, key: str) -> bool:
        with self._lock:
            return key in self._keys

    def put(self, key: str, parts: Sequence[bytes]) -> None:
        path = self._root / key
        tmp = temp_name(path, path.parent)
        try:
            write_file(tmp, parts, durable=False, writeback=True)
        except FileNotFoundError:
            make_private_dirs(path.parent)
            write_file(tmp, parts, durable=False, writeback=True)
        with self._lock:
            self._waiting.append((tmp, path, key))
            self._keys.add(key)
            self._bytes += sum(map(len, parts))
            full = self._bytes >= BATCH_BYTES or len(self._waiting) >= BATCH_FILES
        # One worker names a full batch while the others keep writing the next one.
        if full and self._naming.acquire(blocking=False):
            try:
                self._name_waiting()
            finally:
                self._naming.release()

    def publish(self) -> None:
        with self._naming:
            self._name_waiting()

    def discard(self) -> None:
        with self._naming, self._lock:
            for tmp, _, _ in self._waiting:
                tmp.unlink(missing_ok=True)
            self._waiting.clear()
            self._keys.clear()
            self._bytes = 0

    def _name_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._bytes = 0
        if not batch:
            return
        sync_filesystem(self._root)  # the bytes first ...
        for tmp, path, _ in batch:
            os.replace(tmp, path)  # ... then the names (a bad old file is replaced)
        with self._lock:
            for _, _, key in batch:
                self._keys.discard(key)
