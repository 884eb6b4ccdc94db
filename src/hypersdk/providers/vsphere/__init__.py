"""vSphere provider: changed block tracking through pyVmomi, data over HTTPS ``/folder``.

The only package of HyperSDK that imports pyVmomi. Modules (private): ``_connection``
logs in and out, ``_faults`` translates pyVmomi errors, ``_inventory`` finds the VM and
describes disks, ``_snapshots`` runs tasks and owns our snapshots (and leftovers of
crashed runs), ``_changed`` pages QueryChangedDiskAreas, ``_reader`` reads flat disk
files with HTTPS Range requests, ``_session`` is the backup session, ``_provider`` the
facade.

Errors raised (all ``hypersdk.errors``)::

    UsageError        a malformed server or inventory path
    NotFoundError     no VM at that inventory path
    ConnectionFailed  cannot reach or log in to the server; a datastore read keeps failing
    ConflictError     another export of this tool is running on the VM
    CbtUnavailable    CBT cannot be enabled (hardware version, capability)
    ChangeIdInvalid   the previous change id is unknown (the engine then exports full)
    ProviderError     any other vSphere fault; a disk that cannot be read (delta, RDM,
                      independent); a Range reply that is not an exact 206
"""

from hypersdk.providers.vsphere._connection import VsphereConnection
from hypersdk.providers.vsphere._provider import VsphereProvider, open_vsphere_provider
from hypersdk.providers.vsphere._session import VsphereBackupSession

__all__ = [
    "VsphereBackupSession",
    "VsphereConnection",
    "VsphereProvider",
    "open_vsphere_provider",
]
