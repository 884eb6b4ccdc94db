"""``open_qemu_provider``: turn a locator into a connected provider.

Locators::

    qemu:/path/to/qmp.sock                      a running QEMU or qemu-storage-daemon
    qemu:/path/to/qmp.sock?nbd=/path/nbd.sock   ...that already runs an NBD server
                                                (QEMU has only one; we add our exports)
    qcow2:/path/to/disk.qcow2                   a qcow2 image no process has open
"""

from __future__ import annotations

import os
import stat
from urllib.parse import parse_qs

from hypersdk.errors import NotFoundError, UsageError
from hypersdk.providers.qemu._provider import Qcow2Provider, QmpProvider
from hypersdk.providers.qemu._qmp import QmpConnection

SCHEMES = ("qemu", "qcow2")


def _split(locator: str) -> tuple[str, str, dict[str, str]]:
    scheme, sep, rest = locator.partition(":")
    if not sep or scheme not in SCHEMES:
        raise UsageError(
            f"bad QEMU locator {locator!r}: expected qemu:/path/to/qmp.sock "
            "or qcow2:/path/to/disk.qcow2"
        )
    path, _, query = rest.partition("?")
    if path.startswith("//"):  # tolerate qemu:///path
        path = "/" + path.lstrip("/")
    if not path:
        raise UsageError(f"bad QEMU locator {locator!r}: no path after {scheme}:")
    options: dict[str, str] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key != "nbd" or scheme != "qemu":
            raise UsageError(f"bad QEMU locator {locator!r}: unknown option {key!r}")
        options[key] = values[-1]
    return scheme, path, options


def check_exists(locator: str) -> tuple[str, str, dict[str, str]]:
    """Parse a locator and check that its image or QMP socket exists: NotFoundError when
    it does not (what the user typed names nothing), UsageError when it is the wrong kind
    of file. Returns the parsed locator."""
    scheme, path, options = _split(locator)
    what = "qcow2 image" if scheme == "qcow2" else "QMP socket"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise UsageError(f"{what} {path}: {err.strerror}") from err
    if scheme == "qcow2" and not stat.S_ISREG(mode):
        raise UsageError(f"qcow2 image {path} is not a file")
    if scheme == "qemu" and not stat.S_ISSOCK(mode):
        raise UsageError(f"QMP socket {path} is not a unix socket")
    return scheme, path, options


def open_qemu_provider(locator: str) -> QmpProvider | Qcow2Provider:
    """Open the provider a ``qemu:`` or ``qcow2:`` locator names."""
    scheme, path, options = check_exists(locator)
    if scheme == "qcow2":
        return Qcow2Provider(locator, path)
    nbd = options.get("nbd") or None
    # A socket file nobody listens on is a ConnectionFailed (the VM is not running).
    return QmpProvider(locator, QmpConnection.connect(path), nbd)
