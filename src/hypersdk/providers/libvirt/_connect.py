"""The ``libvirt:`` locator, the connection URI, and libvirt's errors as ours.

Locator: ``libvirt:DOMAIN`` or ``libvirt:DOMAIN?connect=URI`` (DOMAIN is a name or a
UUID). The connection is, as for ``virsh``: the locator's ``connect=``, else
``--connect``, else ``LIBVIRT_DEFAULT_URI``, else ``qemu:///system``. The canonical form
always names the connection, ``libvirt:DOMAIN?connect=URI``: one domain name on two
hosts is two VMs. Everything after ``?connect=`` is the URI, as typed (a URI has its
own ``?``); so a domain name cannot hold ``?connect=``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypersdk.errors import (
    ConflictError,
    ConnectionFailed,
    HyperSDKError,
    NotFoundError,
    ProviderError,
    UsageError,
)

PREFIX = "libvirt:"
CONNECT = "?connect="
DEFAULT_URI = "qemu:///system"


@dataclass(frozen=True, slots=True)
class Locator:
    domain: str
    uri: str

    def canonical(self) -> str:
        return f"{PREFIX}{self.domain}{CONNECT}{self.uri}"


def is_libvirt_locator(text: str) -> bool:
    return text.startswith(PREFIX)


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def parse(locator: str, connect: str | None = None) -> Locator:
    text = locator.strip()
    if not is_libvirt_locator(text):
        raise UsageError(f"bad libvirt locator {locator!r}: expected libvirt:DOMAIN")
    rest = text[len(PREFIX) :]
    domain, sep, uri = rest.partition(CONNECT)
    domain = domain.strip()
    if not domain or "/" in domain or "\x00" in domain:
        raise UsageError(f"bad libvirt locator {locator!r}: expected libvirt:DOMAIN")
    if sep and not uri.strip():
        raise UsageError(f"bad libvirt locator {locator!r}: empty connection URI")
    if sep and connect and uri.strip() != connect.strip():
        raise UsageError(f"--connect {connect} contradicts the locator's connect={uri}")
    return Locator(domain, (uri or connect or default_uri()).strip())


def with_connect(locator: str, connect: str | None) -> str:
    """The locator with ``connect`` written into it (``--connect``), so that what the
    repository records names the connection."""
    if not connect or not is_libvirt_locator(locator.strip()):
        return locator
    return parse(locator, connect).canonical()


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as err:
        raise ProviderError(
            "the libvirt Python binding is missing: pip install 'hypersdk[libvirt]' "
            "(it builds against Debian's libvirt-dev)"
        ) from err
    # libvirt prints every error on stderr by default; ours are raised, not printed.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def lib() -> Any:
    """The ``libvirt`` module (imported on first use: vSphere and QEMU users need not
    have it)."""
    return _libvirt()


def translate(err: Exception, what: str) -> HyperSDKError:
    """One libvirt error as one of ours (the message keeps libvirt's text)."""
    lv = lib()
    code = err.get_error_code() if isinstance(err, lv.libvirtError) else None
    text = str(err).strip() or type(err).__name__
    if code in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_NO_DOMAIN_CHECKPOINT):
        return NotFoundError(f"{what}: {text}")
    if code in (lv.VIR_ERR_NO_CONNECT, lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_ERR_RPC):
        return ConnectionFailed(f"{what}: {text}")
    if code == lv.VIR_ERR_OPERATION_INVALID and "job" in text:
        return ConflictError(f"{what}: {text}")
    if code == lv.VIR_ERR_AUTH_FAILED or code == lv.VIR_ERR_ACCESS_DENIED:
        return ConnectionFailed(f"{what}: {text}")
    return ProviderError(f"{what}: {text}")


@contextlib.contextmanager
def calling(what: str) -> Iterator[None]:
    """Run libvirt calls; a ``libvirtError`` leaves as one of ours, chained."""
    lv = lib()
    try:
        yield
    except lv.libvirtError as err:
        raise translate(err, what) from err


def open_connection(uri: str) -> Any:
    lv = lib()
    try:
        return lv.open(uri)
    except lv.libvirtError as err:
        raise ConnectionFailed(f"cannot connect to libvirt at {uri}: {err}") from err


def lookup(conn: Any, domain: str, uri: str) -> Any:
    lv = lib()
    try:
        return conn.lookupByName(domain)
    except lv.libvirtError as err:
        if err.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
            raise translate(err, f"domain {domain}") from err
    with contextlib.suppress(lv.libvirtError):
        return conn.lookupByUUIDString(domain)
    raise NotFoundError(f"libvirt domain {domain} does not exist on {uri}")
