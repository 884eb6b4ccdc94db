"""Fleet limits: at most N exports at once per datastore and per ESXi host, across every
worker, with Redis semaphores whose slots expire (a crashed holder's slot frees itself
after the lease time; a live holder renews it). The per-worker limit is the worker's
``--concurrency``.

A semaphore is a sorted set ``hypersdk:fleet:limit:<kind>:<name>``: members are holder
tokens, scores the time (Redis's clock, so workers' clocks do not matter) their slot
expires. Taking a slot drops the expired ones first, in the same script.

Placement keys (what a limit counts):

- vSphere: the ESXi host the VM runs on and the datastore of its first disk.
- QEMU and qcow2: the host is the machine (QEMU runs where its socket is); the datastore
  is the filesystem that holds the first disk image, named by its mount source from
  ``/proc/self/mountinfo``: for a network filesystem (NFS, CIFS, Ceph, GlusterFS...) the
  source alone (``nas:/vms``), the same on every machine that mounts it; for a local one
  the machine's name and the device (``web01:/dev/sda2``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from hypersdk.daemon.fleet import PREFIX, FleetLimits
from hypersdk.providers.base import Provider

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "fuse.glusterfs", "9p")
POLL = 0.2  # seconds between two tries for a busy slot

# KEYS: the semaphore. ARGV: token, limit, ttl (ms).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and
   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class Slot:
    kind: str  # "datastore" or "host"
    name: str
    limit: int

    @property
    def key(self) -> str:
        return f"{PREFIX}limit:{self.kind}:{self.name}"


@dataclass(frozen=True)
class Placement:
    host: str | None
    datastore: str | None

    def slots(self, limits: FleetLimits) -> list[Slot]:
        found = []
        if self.datastore and limits.datastore:
            found.append(Slot("datastore", self.datastore, limits.datastore))
        if self.host and limits.host:
            found.append(Slot("host", self.host, limits.host))
        return found


class Semaphores:
    """Takes all of a job's slots or none (so two jobs never hold one each of the
    other's), renews and gives them back."""

    def __init__(self, client: Any, token: str, ttl_seconds: float) -> None:
        self.client = client
        self.token = token
        self.ms = int(ttl_seconds * 1000)
        self._take = client.register_script(_TAKE)
        self.held: list[Slot] = []

    def try_take(self, slots: list[Slot]) -> bool:
        taken: list[Slot] = []
        for slot in slots:
            if not self._take(keys=[slot.key], args=[self.token, slot.limit, self.ms]):
                for got in taken:
                    self.client.zrem(got.key, self.token)
                return False
            taken.append(slot)
        self.held = taken
        return True

    def take(self, slots: list[Slot], stop: threading.Event) -> bool:
        """Wait for every slot; False if ``stop`` was set first."""
        while not stop.is_set():
            if self.try_take(slots):
                return True
            stop.wait(POLL)
        return False

    def renew(self) -> None:
        for slot in self.held:
            self._take(keys=[slot.key], args=[self.token, slot.limit, self.ms])

    def release(self) -> None:
        for slot in self.held:
            self.client.zrem(slot.key, self.token)
        self.held = []


def placement(provider: Provider) -> Placement:
    """Where the VM's disks are: see the module's docstring."""
    vm = getattr(provider, "vm", None)
    if vm is not None:  # vSphere
        host = vm.runtime.host
        stores = vm.datastore or []
        return Placement(
            str(host.name) if host is not None else None,
            str(stores[0].name) if stores else None,
        )
    many, one = getattr(provider, "disks", None), getattr(provider, "disk", None)
    if many is not None:  # a running QEMU or qemu-storage-daemon
        disks: list[Any] = list(many())
    elif one is not None:  # an offline qcow2 image
        disks = [one()]
    else:
        disks = []
    files = [f for f in (image_file(str(getattr(d, "file", ""))) for d in disks) if f]
    machine = socket.gethostname()
    return Placement(machine, filesystem_of(files[0]) if files else None)


def image_file(name: str) -> str | None:
    """The file under a QEMU node's filename: ``json:{...}`` (a filter node, such as a
    throttle, between the format and its file) names it as its innermost ``filename``."""
    if not name.startswith("json:"):
        return name or None
    try:
        doc: Any = json.loads(name[5:])
    except ValueError:
        return None
    found = None
    while isinstance(doc, dict):
        if isinstance(doc.get("filename"), str):
            found = doc["filename"]
        doc = doc.get("file")
    return found


def filesystem_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The mount source of the filesystem holding ``path`` (see the module's docstring)."""
    real = os.path.realpath(path)
    best: tuple[int, str, str] | None = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > best[0]):
            best = (len(mount), tail[0], tail[1])
    if best is None:
        return None
    _, fstype, source = best
    if fstype in NETWORK_FS or (fstype.startswith("fuse.") and ":" in source):
        return source
    return f"{socket.gethostname()}:{source}"
