"""The export history, exactly as the spec lays it out:

    ~/.hypersdk/incremental/<vm-id>/<YYYY-MM-DDTHH-MM-SS>.json   one record per export
    ~/.hypersdk/incremental/<vm-id>/latest.json -> <newest>.json  relative symlink

``HYPERSDK_STATE_DIR`` replaces ``~/.hypersdk``. A record is written atomically and only
after the repository committed the generation it describes, so the change ids it holds
always belong to data that is safe.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypersdk.errors import RepositoryError
from hypersdk.repository.files import fsync_dir, write_atomic
from hypersdk.repository.layout import safe_name
from hypersdk.state.folder import prepare_state_dir, private_subfolder, state_dir

log = logging.getLogger(__name__)


@dataclass
class DiskEntry:
    key: str
    path: str
    capacity_bytes: int
    change_id: str
    backing_info: str


@dataclass
class ExportRecord:
    """The spec's metadata format, plus what the decision logic and analysis need."""

    vm_id: str
    vm_name: str
    export_time: str  # "2026-02-03T10:30:15Z"
    snapshot_id: str
    change_id: str
    disk_change_ids: dict[str, str]
    export_path: str
    total_size: int
    disks: list[DiskEntry]
    # Beyond the spec: where the generation is and how it was made.
    platform: str = ""
    locator: str = ""
    generation: str = ""
    repository_id: str = ""
    mode: str = "full"
    reason: str = ""
    cbt_enabled: bool = True
    bytes_read: int = 0
    bytes_stored: int = 0
    duration_s: float = 0.0
    created: str = ""  # the generation's start with microseconds: orders same-second exports
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> datetime:
        return datetime.strptime(self.export_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> ExportRecord:
        """A record from its JSON; ValueError names the first field of the wrong shape,
        so a damaged file is skipped instead of failing the decision later."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        _check_fields(doc, _RECORD_FIELDS, _OPTIONAL_FIELDS)
        disks = []
        for d in doc["disks"]:
            if not isinstance(d, dict):
                raise ValueError("a disk entry is not a JSON object")
            _check_fields(d, _DISK_FIELDS)
            disks.append(DiskEntry(**{k: d[k] for k in _DISK_FIELDS}))
        if not all(isinstance(v, str) for v in doc["disk_change_ids"].values()):
            raise ValueError("disk_change_ids is not an object of strings")
        known = set(cls.__dataclass_fields__)
        rec = cls(**{k: v for k, v in doc.items() if k in known and k != "disks"}, disks=disks)
        _ = rec.time  # the export time must parse: the age check needs it
        return rec


# Field -> the JSON type it must have (bool is not accepted where an int is meant).
_DISK_FIELDS: dict[str, type] = {
    "key": str,
    "path": str,
    "capacity_bytes": int,
    "change_id": str,
    "backing_info": str,
}
_RECORD_FIELDS: dict[str, type] = {
    "vm_id": str,
    "vm_name": str,
    "export_time": str,
    "snapshot_id": str,
    "change_id": str,
    "export_path": str,
    "total_size": int,
    "disks": list,
    "disk_change_ids": dict,
}
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "platform": str,
    "locator": str,
    "generation": str,
    "repository_id": str,
    "mode": str,
    "reason": str,
    "cbt_enabled": bool,
    "bytes_read": int,
    "bytes_stored": int,
    "duration_s": (int, float),
    "created": str,
    "extra": dict,
}


def _check_fields(
    doc: dict[str, Any],
    required: dict[str, type],
    optional: dict[str, type | tuple[type, ...]] | None = None,
) -> None:
    for name, kind in required.items():
        if name not in doc:
            raise ValueError(f"{name} is missing")
        if not _is(doc[name], kind):
            raise ValueError(f"{name} is not of type {kind.__name__}")
    for name, kinds in (optional or {}).items():
        if name in doc and not _is(doc[name], kinds):
            raise ValueError(f"{name} has the wrong type")


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


class History:
    def __init__(self, base: Path | None = None) -> None:
        self.base = base or state_dir()
        self.root = self.base / "incremental"

    def prepare(self) -> None:
        """Make sure records can be written (a private state folder) before an export
        starts, so a bad state folder is an error before the copy, not after its commit."""
        prepare_state_dir(self.base)

    def folder(self, vm_id: str) -> Path:
        return self.root / safe_name(vm_id)

    def records(self, vm_id: str) -> list[ExportRecord]:
        """Every readable record of a VM, oldest first. Unreadable files are skipped:
        the history is a cache of what the repository holds, never the only copy."""
        folder = self.folder(vm_id)
        out: list[ExportRecord] = []
        if not folder.is_dir():
            return out
        for path in sorted(folder.glob("*.json")):
            if path.name == "latest.json":
                continue
            try:
                out.append(ExportRecord.from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError) as err:
                log.warning("skipped export history record %s: %s", path, err)
        return sorted(out, key=lambda r: (r.export_time, r.created))

    def latest(self, vm_id: str, repository_id: str | None = None) -> ExportRecord | None:
        """The newest record, or the newest made into the given repository."""
        recs = self.records(vm_id)
        if repository_id is not None:
            recs = [r for r in recs if r.repository_id == repository_id]
        return recs[-1] if recs else None

    def record(self, rec: ExportRecord) -> Path:
        """Write a record and point latest.json at it, atomically."""
        self.prepare()
        folder = self.folder(rec.vm_id)
        try:
            private_subfolder(self.base, self.root.name, folder.name)
            stem = rec.time.strftime("%Y-%m-%dT%H-%M-%S")
            path = folder / f"{stem}.json"
            n = 2
            while path.exists():
                path = folder / f"{stem}-{n}.json"
                n += 1
            blob = (json.dumps(rec.to_json(), indent=2) + "\n").encode()
            write_atomic(path, blob, folder)
            link_tmp = folder / f".latest.{uuid.uuid4().hex[:8]}"
            os.symlink(path.name, link_tmp)
            os.replace(link_tmp, folder / "latest.json")
            fsync_dir(folder)
        except OSError as exc:
            raise RepositoryError(
                f"cannot write export history in {folder}: {exc.strerror or exc}"
            ) from exc
        return path
