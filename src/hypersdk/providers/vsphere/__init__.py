"""vSphere provider: changed block tracking through pyVmomi, data over HTTPS ``/folder``.

The only package of HyperSDK that imports pyVmomi. Modules (private): ``_connection``
logs in and out and holds the one TLS context of login and data reads, ``_faults``
translates pyVmomi errors, ``_inventory`` finds the VM and describes disks,
``_snapshots`` runs tasks and owns our snapshots (which are busy, which are leftovers of
crashed runs), ``_live`` is the process's registry of live sessions' snapshots,
``_changed`` pages QueryChangedDiskAreas, ``_reader`` reads flat disk files with HTTPS
Range requests, ``_session`` is the backup session, ``_provider`` the facade, ``_list``
lists the VMs with their host and datastore (backup policies' folders and globs).

Settings (``hypersdk.providers.connection.VsphereSettings``) that change behaviour here:
``ca_file`` (``HYPERSDK_VSPHERE_CA_FILE``, ``GOVC_TLS_CA_CERTS``): CA certificates
trusted besides the system store, for login and data reads; ``insecure``: no
verification for either; ``foreign_snapshot_max_age_hours``
(``HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE``, hours, default 24): how long a snapshot
of this tool made on another host counts as a running export there.

Errors raised (all ``hypersdk.errors``)::

    UsageError        a malformed server or inventory path; an unreadable CA file
    NotFoundError     no VM at that inventory path
    ConnectionFailed  cannot reach or log in to the server; its certificate does not
                      verify; a datastore read keeps failing
    ConflictError     a snapshot of a running export of this tool is on the VM (this
                      process, a live process on this host, or another host's that is
                      younger than the foreign snapshot age)
    CbtUnavailable    CBT cannot be enabled (hardware version, capability)
    ChangeIdInvalid   the previous change id is unknown (the engine then exports full)
    ProviderError     any other vSphere fault; a disk that cannot be read (delta, RDM,
                      independent); a Range reply that is not an exact 206 of the
                      disk's file (Content-Range total = capacity, no content coding)
"""

from hypersdk.providers.vsphere._connection import VsphereConnection
from hypersdk.providers.vsphere._list import InventoryVm, list_vms
from hypersdk.providers.vsphere._provider import VsphereProvider, open_vsphere_provider
from hypersdk.providers.vsphere._session import VsphereBackupSession

__all__ = [
    "InventoryVm",
    "VsphereBackupSession",
    "VsphereConnection",
    "VsphereProvider",
    "list_vms",
    "open_vsphere_provider",
]
