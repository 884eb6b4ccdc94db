"""The VMs a repository holds, named the way users name them, and what the shells need
from such a name: listing generations, preparing a restore or a verification, deleting.

``hyperctl`` and ``hypervisord`` both call these, so a VM is named the same way
everywhere. ``resolve_vm`` accepts, in this order:

1. the repository's VM id (what ``generations`` lists as ``vm``);
2. the locator the VM was exported from, in any spelling (``qcow2:/a/../a/d.qcow2``,
   ``DC0/vm/x`` for ``/DC0/vm/x``): compared in canonical form with the locators the
   manifests record; an offline qcow2 image is also found by the id its path stands for
   (so manifests written before locators were recorded still match);
3. the VM's name, when one VM alone has it.

Several VMs behind one locator or name is a UsageError listing their ids; no VM at all is
a NotFoundError naming what the user typed (exit 2, 404), never an empty list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypersdk.engine.audit import suspect_generations
from hypersdk.errors import NotFoundError, UsageError
from hypersdk.providers.factory import canonical_locator, derived_vm_id
from hypersdk.repository.keys import Password
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import BadManifest, Repository
from hypersdk.repository.restore import pick_disk
from hypersdk.repository.verify import select_with_damage


@dataclass(frozen=True)
class VmEntry:
    """One VM of a repository, as its readable manifests describe it."""

    id: str
    name: str  # from the newest generation
    platform: str
    locators: tuple[str, ...]  # canonical, as recorded; empty for older manifests


@dataclass(frozen=True)
class RestorePlan:
    """What a restore needs, checked before any byte is written."""

    repo: Repository
    manifest: Manifest
    disk: str
    capacity: int
    target: Path

    @property
    def vm_id(self) -> str:
        return self.manifest.vm_id


def vms(repo: Repository) -> list[VmEntry]:
    """Every VM with at least one readable generation, sorted by id."""
    out = []
    for vm_id in repo.vm_ids():
        gens = repo.generations(vm_id)
        if not gens:
            continue
        locators = tuple(dict.fromkeys(m.locator for m in gens if m.locator))
        out.append(VmEntry(vm_id, gens[-1].vm_name, gens[-1].platform, locators))
    return out


def resolve_vm(repo: Repository, name: str) -> str:
    """The id of the VM that ``name`` names in ``repo`` (see the module docstring)."""
    if not name.strip():
        raise UsageError("the VM name is empty")
    if _holds(repo, name):
        return name
    entries = vms(repo)
    try:
        canonical: str | None = canonical_locator(name)
    except UsageError:
        canonical = None  # not a locator; may still be a name
    if canonical is not None:
        derived = derived_vm_id(canonical)
        hits = [e for e in entries if canonical in e.locators or e.id == derived]
        if hits:
            return _one(hits, name, "locator")
    hits = [e for e in entries if e.name == name]
    if hits:
        return _one(hits, name, "name")
    raise NotFoundError(
        f"no VM {name!r} in the repository {repo.location} (a VM is named by the locator it "
        "was exported from, its id or its name)"
    )


def _holds(repo: Repository, vm_id: str) -> bool:
    """Whether ``vm_id`` is the id of a VM with a generation, readable or damaged."""
    if not repo.has_vm_folder(vm_id):
        return False
    # damaged() first: it does not log, so the command's own error stays the only line.
    return bool(repo.damaged(vm_id)) or any(m.vm_id == vm_id for m in repo.generations(vm_id))


def _one(hits: Sequence[VmEntry], name: str, kind: str) -> str:
    if len(hits) == 1:
        return hits[0].id
    ids = ", ".join(e.id for e in hits)
    raise UsageError(f"the {kind} {name!r} names several VMs ({ids}): name one by its id")


def list_generations(repo: Repository, vm: str | None = None) -> list[Manifest]:
    """The readable generations of one VM (any name of it) or of every VM, oldest first."""
    if vm is None:
        return repo.all_generations()
    return repo.generations(resolve_vm(repo, vm))


def summaries(gens: list[Manifest]) -> list[dict[str, Any]]:
    """How listings show generations: each manifest's summary, and ``suspect`` when a
    later CBT audit found blocks that tracking missed since that generation."""
    suspect = {(m.vm_id, g) for m in gens for g in suspect_generations([m.audit])}
    return [{**m.summary(), "suspect": (m.vm_id, m.id) in suspect} for m in gens]


def prepare_restore(
    output: str | os.PathLike[str],
    vm: str,
    generation: str,
    disk: str | None,
    to: str | os.PathLike[str],
    *,
    force: bool,
    password: Password | None = None,
) -> RestorePlan:
    """Check the target, then open the repository and resolve the VM, the generation and
    the disk, so that a mistake is reported before a job starts or a file is created."""
    target = Path(to)
    if target.exists() and not force:
        raise UsageError(f"{target} exists; overwriting it needs force")
    if not target.parent.is_dir():
        raise UsageError(f"folder {target.parent} does not exist")
    repo = Repository.open(output, password=password)
    manifest = repo.generation(resolve_vm(repo, vm), generation)
    key = pick_disk(manifest, disk)
    capacity = next(d.capacity_bytes for d in manifest.disks if d.key == key)
    return RestorePlan(repo, manifest, key, capacity, target)


def select_for_verify(
    repo: Repository, vm: str | None, generation: str | None
) -> tuple[str | None, list[Manifest], list[BadManifest]]:
    """(VM id or None for all, readable manifests to check, damaged ones in the
    selection). ``generation`` needs ``vm``; the shells word that rule themselves."""
    vm_id = resolve_vm(repo, vm) if vm is not None else None
    manifests, damaged = select_with_damage(repo, vm_id, generation)
    return vm_id, manifests, damaged


def delete_generation(repo: Repository, vm: str, generation: str) -> Manifest:
    """Forget one generation of the VM ``vm`` names; its chunks go at the next gc."""
    return repo.delete_generation(resolve_vm(repo, vm), generation)
