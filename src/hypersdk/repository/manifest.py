"""Generation manifests: the JSON document whose presence makes a generation exist."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypersdk.errors import IntegrityError

FORMAT = "hypersdk-generation"
VERSION = 1


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

    def disk(self, key: str) -> DiskRecord | None:
        return next((d for d in self.disks if d.key == key), None)

    @property
    def total_size(self) -> int:
        return sum(d.capacity_bytes for d in self.disks)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        vm = {"id": doc.pop("vm_id"), "name": doc.pop("vm_name"), "platform": doc.pop("platform")}
        return {"format": FORMAT, "version": VERSION, "vm": vm, **doc}

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def decode(cls, blob: bytes, where: str = "manifest") -> Manifest:
        try:
            doc = json.loads(blob)
            if doc.get("format") != FORMAT:
                raise IntegrityError(f"{where}: not a HyperSDK generation manifest")
            if doc.get("version") != VERSION:
                raise IntegrityError(f"{where}: unsupported manifest version {doc.get('version')}")
            vm = doc["vm"]
            disks = [DiskRecord(**d) for d in doc["disks"]]
            return cls(
                id=doc["id"],
                vm_id=vm["id"],
                vm_name=vm["name"],
                platform=vm["platform"],
                repository_id=doc["repository_id"],
                parent=doc["parent"],
                type=doc["type"],
                reason=doc["reason"],
                block_size=int(doc["block_size"]),
                created=doc["created"],
                completed=doc["completed"],
                tool_version=doc["tool_version"],
                disks=disks,
                stats=dict(doc.get("stats", {})),
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{where}: malformed manifest ({exc})") from exc
