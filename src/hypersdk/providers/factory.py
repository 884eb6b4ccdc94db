"""Pick the provider for what the user typed as ``--vm`` / ``vm_path``, and the one
spelling of a locator (``canonical_locator``) under which the repository records it."""

from __future__ import annotations

import os
import posixpath

from hypersdk.errors import UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.connection import VsphereSettings

QEMU_PREFIXES = ("qemu:", "qcow2:")
LIBVIRT_PREFIX = "libvirt:"  # a libvirt domain (providers/libvirt)
RAW_PREFIX = "raw:"  # the raw image source of tests and benches (providers/raw.py)


def is_qemu_locator(text: str) -> bool:
    return text.startswith(QEMU_PREFIXES)


def canonical_locator(locator: str) -> str:
    """The one spelling of a locator: ``qemu:``/``qcow2:`` with an absolute, normalised
    path and no options (``?nbd=`` says how to reach the VM, not which VM it is); a vSphere
    inventory path with one leading slash and none at the end. Two spellings of one VM
    (``DC0/vm/x`` and ``/DC0/vm/x``, ``qcow2:/a/../a/d.qcow2`` and ``qcow2:/a/d.qcow2``)
    give the same string. Symbolic links are not followed: the repository may be read on
    another host."""
    text = locator.strip()
    if not text:
        raise UsageError("the VM locator is empty")
    if text.startswith(RAW_PREFIX):  # engine tests and benches: a name, not a path
        return text
    if text.startswith(LIBVIRT_PREFIX):  # libvirt:DOMAIN?connect=URI, the URI resolved
        from hypersdk.providers.libvirt import parse

        return parse(text).canonical()
    if is_qemu_locator(text):
        scheme, _, rest = text.partition(":")
        path = rest.partition("?")[0]
        if not path:
            raise UsageError(f"bad QEMU locator {locator!r}: no path after {scheme}:")
        if path.startswith("//"):  # qemu:///path, as the provider reads it
            path = "/" + path.lstrip("/")
        return f"{scheme}:{posixpath.normpath(os.path.abspath(path))}"
    path = text.strip("/")
    if not path:
        raise UsageError(f"bad vSphere inventory path {locator!r}")
    return "/" + path


def open_provider(
    locator: str, vsphere: VsphereSettings | None = None, *, connect: str | None = None
) -> Provider:
    """``qemu:/path/qmp.sock`` (running QEMU or qemu-storage-daemon),
    ``qcow2:/path/disk.qcow2`` (an offline image), or a vSphere inventory path
    (``/Datacenter/vm/folder/name``) on the server named by ``vsphere``, or a libvirt
    domain ``libvirt:DOMAIN[?connect=URI]`` (``connect``: the ``--connect`` URI).

    A qcow2 image or QMP socket that does not exist is a NotFoundError (exit 2, 404),
    like an unknown vSphere VM; a socket nobody answers on is a ConnectionFailed."""
    if not locator:
        raise UsageError("--vm is empty")
    if is_qemu_locator(locator):
        # Imported here so that vSphere users never load QMP and the reverse.
        from hypersdk.providers.qemu import open_qemu_provider

        return open_qemu_provider(locator)
    if locator.startswith(LIBVIRT_PREFIX):
        from hypersdk.providers.libvirt import open_libvirt_provider

        return open_libvirt_provider(locator, connect)
    # Anything else is a vSphere inventory path.
    if vsphere is None:
        raise UsageError(
            f"cannot tell the platform of {locator!r}: for a vSphere inventory path pass "
            "--server (and --username) or set GOVC_URL/HYPERSDK_VSPHERE_URL; for QEMU use "
            "qemu:/path/to/qmp.sock or qcow2:/path/to/disk.qcow2; for libvirt libvirt:DOMAIN"
        )
    from hypersdk.providers.vsphere import open_vsphere_provider

    return open_vsphere_provider(locator, vsphere)


def check_exists(locator: str) -> None:
    """NotFoundError when the qcow2 image or QMP socket of a QEMU locator is missing (a
    vSphere path can only be checked by logging in). Cheap: one stat, no connection."""
    if is_qemu_locator(locator):
        from hypersdk.providers.qemu._factory import check_exists as check_qemu

        check_qemu(locator)


def derived_vm_id(locator: str) -> str | None:
    """The VM id a locator stands for when it can be computed without asking the
    hypervisor: only an offline qcow2 image's (its id is its hashed real path). None for
    the others, whose id (a UUID) only the hypervisor knows."""
    text = locator.strip()
    if not text.startswith("qcow2:"):
        return None
    from hypersdk.providers.qemu._provider import qcow2_vm_id

    return qcow2_vm_id(canonical_locator(text).removeprefix("qcow2:"))


def export_key(locator: str) -> str:
    """What names one VM before anyone connects to it: the id when the locator gives it
    (a qcow2 image, symbolic links followed), else the canonical locator."""
    return derived_vm_id(locator) or canonical_locator(locator)
