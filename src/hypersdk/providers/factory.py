"""Pick the provider for what the user typed as ``--vm`` / ``vm_path``."""

from __future__ import annotations

from hypersdk.errors import UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.connection import VsphereSettings

QEMU_PREFIXES = ("qemu:", "qcow2:")


def open_provider(locator: str, vsphere: VsphereSettings | None = None) -> Provider:
    """``qemu:/path/qmp.sock`` (running QEMU or qemu-storage-daemon),
    ``qcow2:/path/disk.qcow2`` (an offline image), or a vSphere inventory path
    (``/Datacenter/vm/folder/name``) on the server named by ``vsphere``."""
    if not locator:
        raise UsageError("--vm is empty")
    if locator.startswith(QEMU_PREFIXES):
        # Imported here so that vSphere users never load QMP and the reverse.
        from hypersdk.providers.qemu import open_qemu_provider

        return open_qemu_provider(locator)
    # Anything else is a vSphere inventory path.
    if vsphere is None:
        raise UsageError(
            f"cannot tell the platform of {locator!r}: for a vSphere inventory path pass "
            "--server (and --username) or set GOVC_URL/HYPERSDK_VSPHERE_URL; for QEMU use "
            "qemu:/path/to/qmp.sock or qcow2:/path/to/disk.qcow2"
        )
    from hypersdk.providers.vsphere import open_vsphere_provider

    return open_vsphere_provider(locator, vsphere)
