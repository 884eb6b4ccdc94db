"""The repository facade: config, generations, indexes and the commit protocol.

It reaches its objects only through a ``storage.Storage`` (a local folder or S3). Write
order (docs/repository-format.md): chunks (locally temp files, named in batches only after
a syncfs made their bytes durable; on S3 PUTs that completed); indexes; ``sync`` (one
syncfs that makes the names and indexes durable); then the manifest by one atomic put.
A generation exists iff its manifest exists; anything an interrupted writer left behind
is garbage for ``gc``.

Manifest bytes pass through ``_get_manifest``/``_put_manifest`` and index bytes through
``_fetch_index``/``_store_index``, and nowhere else.

A damaged manifest (not JSON, wrong shape, bad checksum, a name that is not its id) is
isolated: ``generations`` and ``vm_ids`` skip it with a logged warning, ``damaged`` lists
it (for verify), and only asking for that very generation raises an IntegrityError.

An encrypted repository (config ``encryption``) is opened with a password that unlocks
one of its key files (``keys.py``); its chunks are named and sealed by a ``SealedCodec``
and its manifests and indexes are sealed objects (``crypto.py``), bound to their paths.
The seams are ``_read_manifest``, ``commit``, ``load_index``, ``_index_file`` and
``build_index``: everything above them sees plaintext.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypersdk.errors import (
    IntegrityError,
    NotFoundError,
    PasswordError,
    RepositoryError,
    UsageError,
)
from hypersdk.repository.chunkstore import ChunkBatch, ChunkStore
from hypersdk.repository.crypto import (
    KEY_BYTES,
    KIND_MANIFEST,
    RepositoryKeys,
    open_object,
    seal_object,
)
from hypersdk.repository.envelope import (
    DEFAULT_HASH,
    KEYED_HASHES,
    PLAIN_HASHES,
    Codec,
    Compression,
    SealedCodec,
)
from hypersdk.repository.files import make_private_dirs
from hypersdk.repository.index import BuiltIndex, DiskIndex, IndexSource, IndexTarget
from hypersdk.repository.keys import KeyStore, Password, PasswordSource, make_key_file, unlock
from hypersdk.repository.layout import Keys, Layout, safe_name
from hypersdk.repository.manifest import DiskRecord, Manifest, iso, utc_now
from hypersdk.repository.storage import Storage, open_storage
from hypersdk.repository.storage.local import LocalStorage

log = logging.getLogger(__name__)

FORMAT = "hypersdk-repository"
VERSION = 2
VERSIONS = (1, 2, 3)  # a version 1 repository is upgraded to 2 by its next writer
ENCRYPTED_VERSION = 3  # only encrypted repositories: older readers refuse them whole
ENCRYPTION = "aes-256-gcm"
# What may sit in a repository folder that has no config yet: another process is
# creating the repository right now (or crashed doing so).
_INIT_NAMES = {"lost+found", "data", "vms", "locks", "tmp", "keys"}
DEFAULT_BLOCK_SIZE = 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
# zstd level 1 measured 5x faster than level 3 on mixed disk data at a similar ratio
# (bench/bench_repository.py); level 3 could not keep up with a local disk on 2 cores.
DEFAULT_ZSTD_LEVEL = 1
MAX_BLOCK_SIZE = 16 * 1024 * 1024


def check_block_size(block_size: int) -> int:
    if block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise UsageError(f"block size {block_size} must be a power of two from 64 KiB to 16 MiB")
    return block_size


@dataclass(frozen=True)
class BadManifest:
    """A manifest file that cannot be trusted; named by its folder and file name, since
    nothing inside it can be believed."""

    vm: str  # the VM folder's name (the VM id when it is file-name-safe)
    generation: str  # the file name without .json
    path: str  # relative to the repository root
    problem: str


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    created: str
    block_size: int
    hash: str
    compression: str
    compression_level: int
    version: int = VERSION
    encryption: str | None = None  # "aes-256-gcm" when encrypted; nothing secret

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "block_size": self.block_size,
            "hash": self.hash,
            "compression": self.compression,
            "compression_level": self.compression_level,
        }
        if self.encryption is not None:
            doc["encryption"] = self.encryption
        return doc


class Repository:
    """One repository (what ``--output`` names: a folder or an s3:// URL)."""

    def __init__(
        self,
        storage: Storage,
        config: RepositoryConfig,
        master: bytes | None = None,
        key_id: str | None = None,
    ) -> None:
        keys = RepositoryKeys.from_master(master) if master is not None else None
        if (keys is None) != (config.encryption is None):
            raise ValueError("an encrypted repository needs its keys, a plain one none")
        self.storage = storage
        self.location = storage.location  # how messages name the repository
        self.config = config
        self.chunks = ChunkStore(storage)
        self.keys = keys
        self.key_id = key_id  # the key file that unlocked it
        self._master = master
        self.codec = self._codec(Compression.parse(config.compression), config.compression_level)
        self._warned: set[str] = set()
        self._fetched = ExitStack()  # base indexes fetched for the writer holding the lock

    @property
    def root(self) -> Path:
        """The folder of a local repository."""
        if not isinstance(self.storage, LocalStorage):
            raise RepositoryError(f"{self.location} is not a local folder")
        return self.storage.root

    @property
    def layout(self) -> Layout:
        """The object paths of a local repository."""
        return Layout(self.root)

    @property
    def encrypted(self) -> bool:
        return self.keys is not None

    @property
    def key_store(self) -> KeyStore:
        return KeyStore(self.storage)

    @contextmanager
    def managing_keys(self) -> Iterator[tuple[KeyStore, bytes]]:
        """The key files and the master key, under locks/keys.lock (exclusive), for
        ``hyperctl key``. A plain repository has no keys: a UsageError."""
        if self._master is None:
            raise UsageError(f"{self.location} is not encrypted: it has no keys")
        with self.storage.lock(Keys.keys_lock, shared=False, what=f"the keys of {self.location}"):
            yield self.key_store, self._master

    def _codec(self, compression: Compression, level: int) -> Codec:
        hash_name = plain_hash(self.config.hash)
        if self.keys is not None:
            return SealedCodec(self.keys, compression, level, hash_name)
        return Codec(compression, level, hash_name)

    def use_compression(self, compression: str, level: int | None = None) -> None:
        """Store new chunks this way (this process only; the config keeps its default)."""
        self.codec = self._codec(
            Compression.parse(compression), DEFAULT_ZSTD_LEVEL if level is None else level
        )

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls, location: str | os.PathLike[str], *, password: PasswordSource | None = None
    ) -> Repository:
        """Open the repository at ``location`` (a folder or an ``s3://bucket/prefix``);
        an encrypted one is unlocked with ``password`` (asked only then; without a
        source, ``HYPERSDK_PASSWORD``)."""
        storage = open_storage(location)
        raw = _read_config(storage)
        if raw is None:
            raise NotFoundError(f"{storage.location} is not a HyperSDK repository (no config)")
        config = _parse_config(raw, _where(storage, Keys.config))
        store = KeyStore(storage)
        if config.encryption is None:
            if store.exists():
                # The config is not sealed: one edited to "plain" must not make the next
                # export write plaintext beside sealed data.
                raise IntegrityError(
                    f"{_where(storage, Keys.config)}: says the repository is not encrypted, "
                    "but it has key files (keys/): refusing to use it"
                )
            if password is not None and (password.file or password.value):
                log.warning("%s is not encrypted: the password given is not used", location)
            return cls(storage, config)
        master, key_id = unlock(store, config.id, password, f"repository {storage.location}")
        return cls(storage, config, master, key_id)

    @staticmethod
    def exists(location: str | os.PathLike[str]) -> bool:
        """Whether a repository (its config) is at ``location``."""
        return _read_config(open_storage(location)) is not None

    @classmethod
    def open_or_init(
        cls,
        location: str | os.PathLike[str],
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        compression: str = "zstd",
        compression_level: int = DEFAULT_ZSTD_LEVEL,
        password: PasswordSource | None = None,
        encrypt: bool | None = None,
    ) -> Repository:
        """Open the repository at ``location``, creating it with these settings if absent.

        A new repository is encrypted when ``encrypt`` is true, or when it is None and a
        password is given (``password`` returns one, or ``HYPERSDK_PASSWORD`` is set).
        Race-free: the config is created by a put-if-absent, so when two first exports
        start at once exactly one config wins and the other opens it.
        """
        storage = open_storage(location)
        if _read_config(storage) is not None:
            return cls.open(location, password=password)
        Compression.parse(compression)
        secret: str | None = None
        source = password or Password()
        if encrypt is not False:
            # Only an explicit --encryption asks on a terminal; a first export encrypts
            # when a password is given (environment or file), never by surprise.
            secret = (
                source.get(f"the new repository {storage.location}") if encrypt else source.given()
            )
            if encrypt and not secret:
                raise PasswordError(
                    "an encrypted repository needs a password (HYPERSDK_PASSWORD, "
                    "--password-file or a terminal prompt)"
                )
        config = RepositoryConfig(
            id=uuid.uuid4().hex,
            created=iso(utc_now()),
            block_size=check_block_size(block_size),
            hash=KEYED_HASHES[DEFAULT_HASH] if secret else DEFAULT_HASH,
            compression=compression.lower(),
            compression_level=compression_level,
            version=ENCRYPTED_VERSION if secret else VERSION,
            encryption=ENCRYPTION if secret else None,
        )
        master = secrets.token_bytes(KEY_BYTES) if secret else None
        key_id: str | None = None
        blob = (json.dumps(config.to_json(), indent=2) + "\n").encode()
        try:
            if isinstance(storage, LocalStorage):
                path, layout = storage.root, Layout(storage.root)
                if path.exists() and any(p.name not in _INIT_NAMES for p in path.iterdir()):
                    if layout.config.exists():  # made by a racing first export
                        return cls.open(path, password=password)
                    raise UsageError(f"{path} exists, is not empty and is not a repository")
                for folder in (path, layout.data, layout.vms, layout.locks, layout.tmp):
                    make_private_dirs(folder)
            else:
                for info in storage.list(""):
                    if info.key.split("/")[0] not in _INIT_NAMES:
                        raise UsageError(
                            f"{storage.location} is not empty and is not a repository "
                            f"(it holds {info.key})"
                        )
                    break
            store = KeyStore(storage)
            if master is not None and secret:
                # The key file first: a config never names an encryption nobody can open.
                key = make_key_file(master, secret, config.id)
                store.create(key)
                key_id = key.id
            if not storage.put_new(Keys.config, blob):
                if key_id is not None:  # our key wraps a master key nobody uses
                    store.remove(key_id)
                # another process created it first: use theirs
                return cls.open(location, password=password)
        except OSError as exc:
            raise RepositoryError(
                f"cannot create repository at {storage.location}: {exc.strerror or exc}"
            ) from exc
        return cls(storage, config, master, key_id)

    def _upgrade(self) -> None:
        """Mark a version 1 repository as version 2 before writing v2 objects into it
        (older tools then refuse it clearly instead of failing on a v2 chunk)."""
        if self.config.version >= VERSION:
            return
        config = replace(self.config, version=VERSION)
        blob = (json.dumps(config.to_json(), indent=2) + "\n").encode()
        self.storage.put_atomic(Keys.config, blob)
        self.config = config

    # -- generations ----------------------------------------------------------------

    def _scan(self, folder: str) -> tuple[list[Manifest], list[BadManifest]]:
        """Every manifest of one VM folder (its name under ``vms/``), read and checked."""
        good: list[Manifest] = []
        bad: list[BadManifest] = []
        prefix = f"{Keys.vms}{folder}/generations/"
        keys = sorted(i.key for i in self.storage.list(prefix) if i.key.endswith(".json"))
        for key in keys:
            if "/" in key[len(prefix) :]:
                continue
            try:
                good.append(self._read_manifest(key, folder))
            except (IntegrityError, OSError) as exc:
                problem = str(exc) if isinstance(exc, IntegrityError) else f"{key}: {exc}"
                stem = key.rpartition("/")[2].removesuffix(".json")
                bad.append(BadManifest(folder, stem, key, problem))
        return good, bad

    def _warn(self, bad: list[BadManifest]) -> None:
        for b in bad:
            if b.path not in self._warned:
                self._warned.add(b.path)
                log.warning(
                    "skipping generation %s of VM %s, its manifest is damaged: %s "
                    "(hyperctl verify reports it)",
                    b.generation,
                    b.vm,
                    b.problem,
                )

    def scan(self) -> tuple[list[Manifest], list[BadManifest]]:
        """Every VM folder read once: (readable generations, oldest first; damaged
        manifests). For callers that need both, or all generations: each manifest is
        one read (a GET on S3), so reading them once per question adds up."""
        good: list[Manifest] = []
        bad: list[BadManifest] = []
        for folder in self.storage.folders(Keys.vms):
            g, b = self._scan(folder)
            good += g
            bad += b
        return sorted(good, key=lambda m: (m.created, m.id)), bad

    def all_generations(self) -> list[Manifest]:
        """Every readable generation of every VM, oldest first; damaged manifests are
        skipped with a logged warning (see ``damaged``)."""
        good, bad = self.scan()
        self._warn(bad)
        return good

    def vm_ids(self) -> list[str]:
        """Ids of the VMs with at least one readable generation (read from manifests)."""
        ids: set[str] = set()
        for folder in self.storage.folders(Keys.vms):
            good, bad = self._scan(folder)
            self._warn(bad)
            ids.update(m.vm_id for m in good[:1])
        return sorted(ids)

    def has_vm_folder(self, vm_id: str) -> bool:
        """Whether the repository has a folder for ``vm_id`` (says nothing of its
        generations)."""
        return safe_name(vm_id) in self.storage.folders(Keys.vms)

    def generations(self, vm_id: str) -> list[Manifest]:
        """Every readable committed generation of a VM, oldest first; damaged manifests
        are skipped with a logged warning (see ``damaged``)."""
        good, bad = self._scan(safe_name(vm_id))
        self._warn(bad)
        return sorted(good, key=lambda m: (m.created, m.id))

    def damaged(self, vm_id: str | None = None) -> list[BadManifest]:
        """The damaged manifests of one VM, or of every VM folder."""
        if vm_id is not None:
            return self._scan(safe_name(vm_id))[1]
        return self.scan()[1]

    def generation(self, vm_id: str, generation: str = "latest") -> Manifest:
        good, bad = self._scan(safe_name(vm_id))
        gens = sorted(good, key=lambda m: (m.created, m.id))
        for b in bad:
            if b.generation == generation:
                raise IntegrityError(
                    f"generation {generation} of VM {vm_id!r} is damaged: {b.problem}"
                )
        if generation == "latest":
            newer = [b for b in bad if not gens or b.generation > gens[-1].id]
            if newer:
                raise IntegrityError(
                    f"cannot tell the latest generation of VM {vm_id!r}: generation "
                    f"{newer[-1].generation} is damaged ({newer[-1].problem}); "
                    "name a generation"
                )
            self._warn(bad)
        if not gens:
            raise NotFoundError(f"no generations of VM {vm_id!r} in {self.location}")
        if generation == "latest":
            return gens[-1]
        for m in gens:
            if m.id == generation:
                return m
        raise NotFoundError(f"VM {vm_id!r} has no generation {generation!r} in {self.location}")

    def _get_manifest(self, key: str) -> bytes:
        """The one read point of manifest bytes (opened here when sealed)."""
        raw = self.storage.get(key)
        if self.keys is not None:
            raw = open_object(self.keys, KIND_MANIFEST, key, raw, key)
        return raw

    def _put_manifest(self, key: str, blob: bytes) -> None:
        """The one write point of manifest bytes (atomic; the generation exists after);
        sealed here, bound to its key, in an encrypted repository."""
        if self.keys is not None:
            blob = seal_object(self.keys, KIND_MANIFEST, key, blob)
        self.storage.put_atomic(key, blob)

    def _read_manifest(self, key: str, folder: str) -> Manifest:
        where = key
        manifest = Manifest.decode(self._get_manifest(key), where)
        if manifest.repository_id != self.config.id:
            raise IntegrityError(f"{where}: belongs to another repository")
        if manifest.id != key.rpartition("/")[2].removesuffix(".json"):
            raise IntegrityError(f"{where}: the file name does not match its id {manifest.id!r}")
        if safe_name(manifest.vm_id) != folder:
            raise IntegrityError(f"{where}: lies in the folder of another VM ({manifest.vm_id!r})")
        return manifest

    # -- indexes ----------------------------------------------------------------------

    def _fetch_index(self, key: str) -> AbstractContextManager[Path]:
        """The one read point of index bytes: a local file holding them (the object's
        own file locally, a private temp copy from S3) for the context's duration."""
        return self.storage.fetch(key)

    def _store_index(self, key: str, build: Callable[[Path], object]) -> None:
        """The one write point of index bytes: ``build`` writes the file to store."""
        self.storage.write_big(key, build)

    def load_index(self, manifest: Manifest, disk_key: str) -> DiskIndex:
        source, record = self._index_key(manifest, disk_key)
        try:
            with self._fetch_index(source.key) as path:
                index = DiskIndex.read(path, source.sha256, source.where, self.keys)
        except FileNotFoundError:
            raise IntegrityError(f"{source.where}: missing ({record.index})") from None
        if index.capacity != record.capacity_bytes or index.block_size != manifest.block_size:
            raise IntegrityError(
                f"{source.where}: capacity or block size differs from the manifest"
            )
        return index

    def index_source(self, manifest: Manifest, disk_key: str) -> IndexSource:
        """A generation's index for ``build_index`` to stream from: its header is
        checked now, its checksums as it streams. Valid while the writer lock is held
        (an S3 index is fetched into a private temp file released with the lock)."""
        source, record = self._index_key(manifest, disk_key)
        try:
            path = self._fetched.enter_context(self._fetch_index(source.key))
        except FileNotFoundError:
            raise IntegrityError(f"{source.where}: missing") from None
        found = IndexSource(path, source.sha256, source.where, self.keys)
        found.check_header(record.capacity_bytes, manifest.block_size)
        return found

    def _index_key(self, manifest: Manifest, disk_key: str) -> tuple[_IndexKey, DiskRecord]:
        record = manifest.disk(disk_key)
        if record is None:
            keys = ", ".join(d.key for d in manifest.disks)
            raise NotFoundError(
                f"generation {manifest.id} has no disk {disk_key!r} (disks: {keys})"
            )
        key = Keys.index(manifest.vm_id, manifest.id, disk_key)
        if record.index != key:
            # Never follow a path read from a file anywhere else (e.g. "../../etc/x").
            raise IntegrityError(f"{key}: the manifest names it at {record.index!r}")
        return _IndexKey(key, record.index_sha256, key), record

    def build_index(
        self,
        vm_id: str,
        generation: str,
        disk_key: str,
        build: Callable[[IndexTarget], BuiltIndex],
    ) -> tuple[str, BuiltIndex]:
        """Store an index (locally not yet durable) that ``build`` streams into a new
        file (``index.build_index``); returns its key and what ``build`` returned. In an
        encrypted repository the target asks for a sealed stream, bound to the key."""
        key = Keys.index(vm_id, generation, disk_key)
        built: list[BuiltIndex] = []
        self._store_index(key, lambda path: built.append(build(IndexTarget(path, key, self.keys))))
        return key, built[0]

    # -- commit ------------------------------------------------------------------------

    def commit(self, manifest: Manifest, chunks: ChunkBatch | None = None) -> None:
        """Make the generation exist: store the new chunks (locally: name them after
        their bytes are durable), make names and indexes durable, then write the
        manifest."""
        if manifest.repository_id != self.config.id:
            raise IntegrityError("refusing to commit a manifest of another repository")
        if chunks is not None:
            chunks.publish()
        self.storage.sync()
        self._put_manifest(Keys.manifest(manifest.vm_id, manifest.id), manifest.encode())

    def delete_generation(self, vm_id: str, generation: str) -> Manifest:
        """Forget a generation; its chunks go at the next ``gc``. Others stay whole,
        since every index describes a full disk."""
        manifest = self.generation(vm_id, generation)
        with self.writer(vm_id):
            self.storage.delete(Keys.manifest(vm_id, manifest.id))
            self.storage.sync()
        return manifest

    # -- locks -------------------------------------------------------------------------

    @contextmanager
    def writer(self, vm_id: str) -> Iterator[dict[str, object]]:
        """Held by whoever adds or removes generations of ``vm_id``."""
        with (
            self.storage.lock(
                Keys.repository_lock,
                shared=True,
                what=f"repository {self.location} (gc is running)",
            ),
            self.storage.lock(
                Keys.vm_lock(vm_id), shared=False, what=f"VM {vm_id!r} in {self.location}"
            ) as stale,
            self._fetched,
        ):
            self._upgrade()
            yield stale

    @contextmanager
    def reader(self) -> Iterator[None]:
        """Held by restore and verify: gc cannot delete what they are reading."""
        with self.storage.lock(
            Keys.repository_lock,
            shared=True,
            what=f"repository {self.location} (gc is running)",
        ):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by gc: no writer may run at the same time."""
        with self.storage.lock(
            Keys.repository_lock,
            shared=False,
            what=f"repository {self.location} (an export, restore or verify is running)",
        ):
            yield


@dataclass(frozen=True)
class _IndexKey:
    key: str
    sha256: str
    where: str


def _where(storage: Storage, key: str) -> str:
    return f"{storage.location.rstrip('/')}/{key}"


def _read_config(storage: Storage) -> bytes | None:
    """The config's bytes, or None when there is none (not a repository yet)."""
    try:
        return storage.get(Keys.config)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RepositoryError(
            f"cannot read {_where(storage, Keys.config)}: {exc.strerror or exc}"
        ) from exc


def _parse_config(raw: bytes, where: str) -> RepositoryConfig:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise IntegrityError(f"{where}: not a HyperSDK repository config")
        version = doc.get("version")
        if type(version) is not int or version not in VERSIONS:
            raise IntegrityError(f"{where}: unsupported repository version {version!r}")
        encryption = doc.get("encryption")
        config = RepositoryConfig(
            id=str(doc["id"]),
            created=str(doc["created"]),
            block_size=check_block_size(int(doc["block_size"])),
            hash=doc["hash"],
            compression=str(doc["compression"]),
            compression_level=int(doc["compression_level"]),
            version=version,
            encryption=None if encryption is None else str(encryption),
        )
    except (ValueError, KeyError, TypeError, UsageError) as exc:
        raise IntegrityError(f"{where}: malformed config ({exc})") from exc
    # Encryption and version 3 go together, so that no tool that knows only plain
    # repositories writes plaintext into an encrypted one.
    if (config.version == ENCRYPTED_VERSION) != (config.encryption is not None):
        raise IntegrityError(f"{where}: version {version} and encryption do not match")
    if config.encryption not in (None, ENCRYPTION):
        raise IntegrityError(f"{where}: unknown encryption {config.encryption!r}")
    known = PLAIN_HASHES if config.encryption is None else tuple(KEYED_HASHES.values())
    if config.hash not in known:
        raise IntegrityError(f"{where}: unknown hash {config.hash!r}")
    return config


def plain_hash(config_hash: str) -> str:
    """The hash under a config's ``hash`` (``keyed-blake3`` is BLAKE3 with a key)."""
    for plain, keyed in KEYED_HASHES.items():
        if config_hash in (plain, keyed):
            return plain
    raise ValueError(f"unknown chunk hash {config_hash!r}")
