"""libvirt provider: a domain of a libvirt connection, exported through libvirt's backup
API (pull mode, checkpoints as changed block tracking) when it runs, and from its qcow2
images through ``qemu-nbd`` when it is shut off.

Modules (private): ``_connect`` parses locators and translates libvirt's errors,
``_domain`` reads libvirt's XML, ``_session`` holds the backup sessions and sweeps
leftovers, ``_provider`` is the facade.
"""

from __future__ import annotations

from hypersdk.providers.libvirt._connect import (
    PREFIX,
    Locator,
    is_libvirt_locator,
    parse,
    with_connect,
)
from hypersdk.providers.libvirt._provider import LibvirtProvider

__all__ = [
    "PREFIX",
    "LibvirtProvider",
    "Locator",
    "is_libvirt_locator",
    "open_libvirt_provider",
    "parse",
    "with_connect",
]


def open_libvirt_provider(locator: str, connect: str | None = None) -> LibvirtProvider:
    """Connect and find the domain: NotFoundError when it does not exist, ConnectionFailed
    when libvirt does not answer."""
    from hypersdk.providers.libvirt import _connect

    loc = parse(locator, connect)
    conn = _connect.open_connection(loc.uri)
    try:
        dom = _connect.lookup(conn, loc.domain, loc.uri)
    except BaseException:
        conn.close()
        raise
    return LibvirtProvider(loc.canonical(), loc.uri, conn, dom)
