"""Generation manifests: the JSON document whose presence makes a generation exist.

Version 2 carries ``checksum``: ``sha256:`` and the SHA-256 of the document's canonical
JSON without that field (``canonical``), so a flipped digit is found. Version 1 (no
checksum) is still read. ``vm.locator`` (what the VM was exported from, in its canonical
spelling) is optional: manifests written before it existed are read without it, and a
manifest without it encodes without the key, so its checksum stays what it was.
``decode`` checks the shape and the type of every field and
turns any problem into one ``IntegrityError``: a manifest is data from disk, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypersdk.errors import IntegrityError

FORMAT = "hypersdk-generation"
VERSION = 2
VERSIONS = (1, 2)  # what readers accept


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the checksum covers: keys sorted, no whitespace, ASCII only."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_generation_id(ts: datetime) -> str:
    """Sortable by time, unique thanks to a random suffix."""
    return f"{ts.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class DiskRecord:
    key: str
    capacity_bytes: int
    change_id: str
    index: str  # path of the index, relative to the repository root
    index_sha256: str  # SHA-256 of the whole index file
    blocks: int
    zero_blocks: int
    bytes_read: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    path: str = ""
    backing_info: str = ""


@dataclass
class Manifest:
    id: str
    vm_id: str
    vm_name: str
    platform: str
    repository_id: str
    parent: str | None
    type: str  # "full" or "incremental"
    reason: str
    block_size: int
    created: str
    completed: str
    tool_version: str
    disks: list[DiskRecord]
    stats: dict[str, float] = field(default_factory=dict)
    locator: str = ""  # canonical locator the VM was exported from; "" when unknown
    # What a CBT audit (hyperexport --audit) found; None when none was asked for. Its
    # shape belongs to engine/audit.py; a manifest only keeps and checksums it.
    audit: dict[str, Any] | None = None

    def disk(self, key: str) -> DiskRecord | None:
        return next((d for d in self.disks if d.key == key), None)

    @property
    def total_size(self) -> int:
        return sum(d.capacity_bytes for d in self.disks)

    def summary(self) -> dict[str, Any]:
        """How listings show a generation (``hyperctl generations --json``, the daemon's
        ``/generations``): no index paths or checksums."""
        return {
            "id": self.id,
            "vm": self.vm_id,
            "vm_name": self.vm_name,
            "platform": self.platform,
            "locator": self.locator or None,
            "type": self.type,
            "reason": self.reason,
            "parent": self.parent,
            "created": self.created,
            "completed": self.completed,
            "block_size": self.block_size,
            "total_size": self.total_size,
            "bytes_read": int(self.stats.get("bytes_read", 0)),
            "bytes_stored": int(self.stats.get("bytes_stored", 0)),
            "disks": [
                {"key": d.key, "capacity_bytes": d.capacity_bytes, "change_id": d.change_id}
                for d in self.disks
            ],
            "audit": None
            if self.audit is None
            else {
                k: self.audit.get(k)
                for k in ("performed", "previous", "clean", "blocks_checked", "blocks_missed")
            },
        }

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        vm = {"id": doc.pop("vm_id"), "name": doc.pop("vm_name"), "platform": doc.pop("platform")}
        locator = doc.pop("locator")
        if locator:
            vm["locator"] = locator
        if doc["audit"] is None:
            del doc["audit"]  # generations without an audit keep their earlier shape
        out = {"format": FORMAT, "version": VERSION, "vm": vm, **doc}
        out["checksum"] = checksum(out)
        return out

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def decode(cls, blob: bytes, where: str = "manifest") -> Manifest:
        """Parse and check one manifest; any problem is an IntegrityError naming ``where``."""
        try:
            doc = json.loads(blob)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{where}: not a manifest (a JSON {type(doc).__name__})")
        if doc.get("format") != FORMAT:
            raise IntegrityError(f"{where}: not a HyperSDK generation manifest")
        version = doc.get("version")
        if type(version) is not int or version not in VERSIONS:
            raise IntegrityError(f"{where}: unsupported manifest version {version!r}")
        if version >= 2 and doc.get("checksum") != checksum(doc):
            raise IntegrityError(f"{where}: checksum mismatch (the manifest was altered)")
        try:
            vm = _field(doc, "vm", dict)
            disks = [_disk(d) for d in _field(doc, "disks", list)]
            stats = _field(doc, "stats", dict, {})
            if not all(isinstance(k, str) and _number(v) for k, v in stats.items()):
                raise ValueError("stats must map names to numbers")
            return cls(
                id=_field(doc, "id", str),
                vm_id=_field(vm, "id", str),
                vm_name=_field(vm, "name", str),
                platform=_field(vm, "platform", str),
                repository_id=_field(doc, "repository_id", str),
                parent=_field(doc, "parent", (str, type(None))),
                type=_field(doc, "type", str),
                reason=_field(doc, "reason", str),
                block_size=_field(doc, "block_size", int),
                created=_field(doc, "created", str),
                completed=_field(doc, "completed", str),
                tool_version=_field(doc, "tool_version", str),
                disks=disks,
                stats=stats,
                locator=_field(vm, "locator", str, ""),
                audit=_field(doc, "audit", dict, None),
            )
        except ValueError as exc:
            raise IntegrityError(f"{where}: malformed manifest ({exc})") from None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _field(doc: dict[str, Any], key: str, kind: Any, default: Any = ...) -> Any:
    """``doc[key]`` if it has type ``kind`` (bool is not an int here), else ValueError."""
    if key not in doc:
        if default is not ...:
            return default
        raise ValueError(f"missing field {key!r}")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"field {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ValueError(f"field {key!r} has the wrong type")
    return value


def _disk(doc: object) -> DiskRecord:
    if not isinstance(doc, dict):
        raise ValueError("a disk record is not an object")
    text = ("key", "change_id", "index", "index_sha256")
    counts = ("capacity_bytes", "blocks", "zero_blocks")
    extra_counts = ("bytes_read", "bytes_stored", "chunks_new", "chunks_reused")
    record = DiskRecord(
        **{k: _field(doc, k, str) for k in text},
        **{k: _field(doc, k, int) for k in counts},
        **{k: _field(doc, k, int, 0) for k in extra_counts},
        path=_field(doc, "path", str, ""),
        backing_info=_field(doc, "backing_info", str, ""),
    )
    if record.capacity_bytes < 0 or record.blocks < 0:
        raise ValueError(f"disk {record.key!r} has a negative size")
    return record
