"""What libvirt's XML says about a domain's disks, its QEMU user and its checkpoints."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from hypersdk.errors import ProviderError


@dataclass(slots=True)
class Disk:
    """One ``<disk device='disk'>`` of a domain; ``key`` is its target (``vda``)."""

    key: str
    file: str
    format: str
    capacity: int = 0
    cbt_reason: str = ""  # why libvirt cannot keep a checkpoint bitmap on it


@dataclass(slots=True)
class Checkpoint:
    """A libvirt checkpoint: which disks carry a bitmap, and the disk files it saw."""

    name: str
    parent: str
    created: int
    bitmaps: dict[str, str] = field(default_factory=dict)  # disk -> bitmap name
    sizes: dict[str, int] = field(default_factory=dict)  # disk -> dirty bytes (live only)
    files: dict[str, str] = field(default_factory=dict)  # disk -> source file then


def _parse(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as err:
        raise ProviderError(f"libvirt returned unreadable XML for {what}: {err}") from err


def _source(disk: ET.Element) -> str:
    src = disk.find("source")
    if src is None:
        return ""
    return src.get("file") or src.get("dev") or src.get("name") or ""


def disks(domain_xml: str) -> list[Disk]:
    root = _parse(domain_xml, "the domain")
    out = []
    for d in root.findall("./devices/disk"):
        if d.get("device", "disk") != "disk":
            continue  # cdroms and floppies are not the VM's data
        target = d.find("target")
        key = target.get("dev", "") if target is not None else ""
        driver = d.find("driver")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        disk = Disk(key=key, file=_source(d), format=fmt)
        if d.get("type", "file") not in ("file", "block"):
            disk.cbt_reason = f"a {d.get('type')} disk cannot be read through qemu-nbd"
        elif fmt != "qcow2":
            disk.cbt_reason = f"libvirt keeps checkpoints in qcow2 images only (format {fmt})"
        elif d.find("readonly") is not None:
            disk.cbt_reason = "the disk is read-only"
        out.append(disk)
    return out


def dac_owner(live_xml: str) -> tuple[int, int] | None:
    """The uid and gid QEMU runs as (``<seclabel model='dac'><label>+64055:+64055``)."""
    root = _parse(live_xml, "the domain")
    for label in root.findall("./seclabel[@model='dac']/label"):
        uid, sep, gid = (label.text or "").partition(":")
        try:
            if sep:
                return int(uid.lstrip("+")), int(gid.lstrip("+"))
        except ValueError:
            continue
    return None


def checkpoint(xml: str) -> Checkpoint:
    root = _parse(xml, "a checkpoint")
    cp = Checkpoint(
        name=root.findtext("name", ""),
        parent=root.findtext("./parent/name", ""),
        created=int(root.findtext("creationTime", "0") or 0),
    )
    for d in root.findall("./disks/disk"):
        if d.get("checkpoint") == "bitmap":
            name = d.get("name", "")
            cp.bitmaps[name] = d.get("bitmap") or cp.name
            if d.get("size") is not None:
                cp.sizes[name] = int(d.get("size", "0"))
    dom = root.find("domain")
    if dom is not None:
        for d in dom.findall("./devices/disk"):
            target = d.find("target")
            if target is not None:
                cp.files[target.get("dev", "")] = _source(d)
    return cp


def backup_exports(backup_xml: str) -> dict[str, tuple[str, str]]:
    """disk -> (NBD export name, exported bitmap or "") of a running pull backup."""
    root = _parse(backup_xml, "the backup job")
    out = {}
    for d in root.findall("./disks/disk"):
        if d.get("backup", "yes") == "yes":
            name = d.get("name", "")
            out[name] = (d.get("exportname") or name, d.get("exportbitmap") or "")
    return out


def backup_socket(backup_xml: str) -> str:
    root = _parse(backup_xml, "the backup job")
    server = root.find("server")
    return server.get("socket", "") if server is not None else ""
