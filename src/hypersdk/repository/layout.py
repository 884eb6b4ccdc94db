"""Where each object of a repository lives; the only module that builds its names.

<repo>/config                                   repository config (JSON)
<repo>/data/<hh>/<64 hex>                       chunk objects, <hh> = first two hex digits
<repo>/data/<hh>/<64 hex>.<random>.tmp          a chunk not yet named (its batch is not synced)
<repo>/vms/<vm>/generations/<generation>.json   manifests: a generation exists iff this does
<repo>/vms/<vm>/indexes/<generation>/<disk>.idx one index per disk
<repo>/locks/repository.lock                    writers and readers hold it shared, gc exclusive
<repo>/locks/vm-<vm>.lock                       one writer per VM
<repo>/tmp/                                     temporary files; leftovers are gc's
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str) -> str:
    """A file name for ``name`` that cannot leave its folder and stays unique.

    Names that are already safe are kept as they are; others get their unsafe characters
    replaced and a short hash of the original appended, so two names never collide.
    """
    cleaned = _SAFE.sub("_", name).lstrip(".")
    if cleaned == name and cleaned and len(cleaned) <= 120:
        return cleaned
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{cleaned[:100] or 'unnamed'}-{digest}"


class Keys:
    """The storage key (a ``/``-separated relative name) of every repository object; the
    same names as the folder layout above, on every backend."""

    config = "config"
    data = "data/"
    vms = "vms/"
    locks = "locks/"
    tmp = "tmp/"
    repository_lock = "locks/repository.lock"
    keys = "keys/"  # key files of an encrypted repository
    keys_lock = "locks/keys.lock"  # held by hyperctl key while it changes them

    @staticmethod
    def chunk(chunk_id: bytes) -> str:
        hexid = chunk_id.hex()
        return f"data/{hexid[:2]}/{hexid}"

    @staticmethod
    def vm(vm_id: str) -> str:
        return f"vms/{safe_name(vm_id)}/"

    @staticmethod
    def generations(vm_id: str) -> str:
        return f"{Keys.vm(vm_id)}generations/"

    @staticmethod
    def manifest(vm_id: str, generation: str) -> str:
        return f"{Keys.generations(vm_id)}{generation}.json"

    @staticmethod
    def index_dir(vm_id: str, generation: str) -> str:
        return f"{Keys.vm(vm_id)}indexes/{generation}/"

    @staticmethod
    def index(vm_id: str, generation: str, disk_key: str) -> str:
        return f"{Keys.index_dir(vm_id, generation)}{safe_name(disk_key)}.idx"

    @staticmethod
    def vm_lock(vm_id: str) -> str:
        return f"locks/vm-{safe_name(vm_id)}.lock"


class Layout:
    """The same names as paths under a local repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def chunk(self, chunk_id: bytes) -> Path:
        hexid = chunk_id.hex()
        return self.data / hexid[:2] / hexid

    def vm(self, vm_id: str) -> Path:
        return self.vms / safe_name(vm_id)

    def generations(self, vm_id: str) -> Path:
        return self.vm(vm_id) / "generations"

    def manifest(self, vm_id: str, generation: str) -> Path:
        return self.generations(vm_id) / f"{generation}.json"

    def index_dir(self, vm_id: str, generation: str) -> Path:
        return self.vm(vm_id) / "indexes" / generation

    def index(self, vm_id: str, generation: str, disk_key: str) -> Path:
        return self.index_dir(vm_id, generation) / f"{safe_name(disk_key)}.idx"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    @property
    def repository_lock(self) -> Path:
        return self.locks / "repository.lock"

    def vm_lock(self, vm_id: str) -> Path:
        return self.locks / f"vm-{safe_name(vm_id)}.lock"
