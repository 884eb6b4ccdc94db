"""Disk discovery: which block nodes are the VM's disks.

For a ``qemu-system`` VM the disks are the guest's block devices (``query-block``;
removable media such as CD-ROMs are left out). For ``qemu-storage-daemon``, which has no
guest devices, they are the named top-level nodes of the block graph (no block-driver
parent), looked up with ``x-debug-query-block-graph``; filter nodes that a block job put
on top (copy-before-write, throttle...) are seen through, and our own fleecing nodes
(``hypersdk-*``) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypersdk.errors import ProviderError
from hypersdk.providers.qemu import _checkpoints
from hypersdk.providers.qemu._checkpoints import Bitmap
from hypersdk.providers.qemu._qmp import QmpConnection

FILTER_DRIVERS = frozenset(
    {
        "copy-before-write",
        "copy-on-read",
        "throttle",
        "preallocate",
        "blkdebug",
        "blklogwrites",
        "blkverify",
        "compress",
        "quorum",
        "snapshot-access",
    }
)
OUR_NODE_PREFIX = "hypersdk-"


@dataclass(slots=True)
class QemuDisk:
    key: str
    node: str  # the format node that holds the checkpoint bitmaps
    file: str
    capacity: int
    format: str
    read_only: bool = False
    bitmaps: list[Bitmap] = field(default_factory=list)

    @property
    def cbt_reason(self) -> str:
        if self.format != "qcow2":
            return f"{self.format} images cannot hold persistent dirty bitmaps (qcow2 can)"
        if self.read_only:
            return "the disk is read-only"
        return ""


def _nodes(qmp: QmpConnection) -> dict[str, dict[str, Any]]:
    nodes = qmp.execute("query-named-block-nodes", {"flat": True})
    return {str(n["node-name"]): n for n in nodes}


def _disk(key: str, node: Mapping[str, Any]) -> QemuDisk:
    image = node.get("image") or {}
    return QemuDisk(
        key=key,
        node=str(node["node-name"]),
        file=str(node.get("file", "")),
        capacity=int(image.get("virtual-size", 0)),
        format=str(node.get("drv", "")),
        read_only=bool(node.get("ro", False)),
        bitmaps=_checkpoints.from_qmp(node.get("dirty-bitmaps", [])),
    )


def _device_key(dev: Mapping[str, Any], node_name: str) -> str:
    if dev.get("device"):
        return str(dev["device"])
    qdev = str(dev.get("qdev", ""))
    parts = qdev.strip("/").split("/")
    # "/machine/peripheral/<id>/virtio-backend": the -device id the user chose
    if len(parts) >= 3 and parts[1] == "peripheral":
        return parts[2]
    return node_name


def _below_filters(
    name: str,
    nodes: Mapping[str, Mapping[str, Any]],
    children: Mapping[str, list[tuple[str, str]]],
) -> str:
    seen: set[str] = set()
    while nodes.get(name, {}).get("drv") in FILTER_DRIVERS and name not in seen:
        seen.add(name)
        kids = dict(children.get(name, []))
        # a filter's data child is "file" (copy-before-write also has a "target")
        nxt = kids.get("file") or kids.get("backing")
        if nxt is None:
            break
        name = nxt
    return name


def discover(qmp: QmpConnection) -> list[QemuDisk]:
    nodes = _nodes(qmp)
    if qmp.has_command("query-status"):
        return _vm_disks(qmp, nodes)
    return _daemon_disks(qmp, nodes)


def _vm_disks(qmp: QmpConnection, nodes: Mapping[str, Mapping[str, Any]]) -> list[QemuDisk]:
    disks: list[QemuDisk] = []
    children = _graph_children(qmp)
    for dev in qmp.execute("query-block"):
        inserted = dev.get("inserted")
        if not inserted or dev.get("removable"):
            continue
        name = _below_filters(str(inserted["node-name"]), nodes, children)
        node = nodes.get(name, inserted)
        disks.append(_disk(_device_key(dev, name), node))
    return disks


def _graph_children(qmp: QmpConnection) -> dict[str, list[tuple[str, str]]]:
    """Node name -> (edge name, child node name) of its block-driver children."""
    if not qmp.has_command("x-debug-query-block-graph"):
        return {}
    graph = qmp.execute("x-debug-query-block-graph")
    names = {n["id"]: (n["name"], n["type"]) for n in graph["nodes"]}
    children: dict[str, list[tuple[str, str]]] = {}
    for edge in graph["edges"]:
        parent_name, parent_type = names[edge["parent"]]
        child_name, child_type = names[edge["child"]]
        if parent_type == "block-driver" and child_type == "block-driver":
            children.setdefault(parent_name, []).append((str(edge["name"]), child_name))
    return children


def _daemon_disks(qmp: QmpConnection, nodes: Mapping[str, Mapping[str, Any]]) -> list[QemuDisk]:
    if not qmp.has_command("x-debug-query-block-graph"):
        raise ProviderError("this QEMU cannot describe its block graph; cannot find its disks")
    children = _graph_children(qmp)
    # our fleecing node has the disk as its backing child: that edge does not count
    has_parent = {
        c
        for parent, kids in children.items()
        if not parent.startswith(OUR_NODE_PREFIX)
        for _, c in kids
    }
    disks: list[QemuDisk] = []
    seen: set[str] = set()
    for name in sorted(nodes):
        if name in has_parent or name.startswith(OUR_NODE_PREFIX):
            continue
        real = _below_filters(name, nodes, children)
        if real in seen or real.startswith(OUR_NODE_PREFIX) or real.startswith("#"):
            continue
        seen.add(real)
        disks.append(_disk(real, nodes[real]))
    return disks


def find(disks: list[QemuDisk], key: str) -> QemuDisk | None:
    return next((d for d in disks if d.key == key), None)
