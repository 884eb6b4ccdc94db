"""What paths a request may name: the daemon is no file gateway.

Every file or socket path in a request must resolve (``os.path.realpath``: links
followed) inside a folder the operator allowed (``--allow-path``, ``allow_paths``; the
default repository ``--output`` is always allowed). One function per kind of path:

    output          a repository folder (read by status/analyze/generations/verify,
                    created and written by exports), or an ``s3://bucket/prefix`` URL,
                    which must lie at or under an allowed URL prefix, whole segments
                    compared (``s3://b/pre`` allows ``s3://b/pre/x``, not ``s3://b/prefix2``)
    restore target  the file a restore writes (its folder resolved; the file itself if
                    it exists, which must be a regular file, or a block device when the
                    operator allows devices)
    qcow2 image     the image and EVERY file of its backing chain, and any external data
                    file, read from the qcow2 headers here without letting QEMU open a
                    backing file
    qemu sockets    the QMP socket and the optional NBD socket of a ``qemu:`` locator

vSphere inventory paths are not files and are not checked. A refusal is
``ForbiddenPath`` (403 ``forbidden_path``), raised before anything is created, with the
same message whether or not the path exists.

What is not covered: a user who can write inside an allowed folder can swap a checked
file for a link between the check and its use; allowed folders should be writable only
by the operator (docs/api.md).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hypersdk.errors import ForbiddenPath, UsageError
from hypersdk.repository.storage import is_url
from hypersdk.repository.storage.urls import S3Url, parse_s3_url

MAX_CHAIN_DEPTH = 64

_QCOW2_MAGIC = b"QFI\xfb"
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_MAX_HEADER = 1 << 20  # header plus extensions live in the first cluster (<= 2 MiB)


@dataclass(frozen=True)
class Qcow2Header:
    backing: str | None  # the backing file name exactly as stored
    backing_format: str | None
    data_file: str | None  # the external data file name, as stored


def _show(path: str) -> str:
    """A path for a message: bytes that are not UTF-8 shown escaped, on one line."""
    return path.encode("utf-8", "backslashreplace").decode().replace("\n", "\\n")


def has_protocol(name: str) -> bool:
    """QEMU's rule: a ':' before any '/' makes a name a protocol (nbd:, json:, file:...)."""
    for c in name:
        if c == "/":
            return False
        if c == ":":
            return True
    return False


def read_qcow2_header(path: str) -> Qcow2Header | None:
    """The file names a qcow2 header refers to; None if the file is not qcow2 v2/v3.
    Opened without following a FIFO's open block; regular files and block devices only."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise ForbiddenPath(f"{path} is not a regular file or block device")
        head = os.pread(fd, 104, 0)
        if len(head) < 72 or head[:4] != _QCOW2_MAGIC:
            return None
        version, backing_off, backing_len = struct.unpack_from(">IQI", head, 4)
        if version not in (2, 3):
            return None  # qcow v1 and unknown versions: QEMU refuses them as qcow2
        header_len = 72
        if version == 3:
            if len(head) < 104:
                return None
            header_len = struct.unpack_from(">I", head, 100)[0]
        backing = None
        if backing_off and backing_len:
            if backing_len > 1023 or backing_off > _MAX_HEADER:
                raise ForbiddenPath(f"qcow2 image {path} has a malformed backing file name")
            # fsdecode: the same bytes QEMU will open, whatever their encoding
            backing = os.fsdecode(os.pread(fd, backing_len, backing_off))
        fmt = data_file = None
        offset = header_len
        while 0 < offset < _MAX_HEADER:
            ext = os.pread(fd, 8, offset)
            if len(ext) < 8:
                break
            kind, length = struct.unpack(">II", ext)
            if kind == _EXT_END:
                break
            body = os.fsdecode(os.pread(fd, length, offset + 8))
            if kind == _EXT_BACKING_FORMAT:
                fmt = body
            elif kind == _EXT_DATA_FILE:
                data_file = body
            offset += 8 + (length + 7) // 8 * 8
        return Qcow2Header(backing, fmt, data_file)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AllowedPaths:
    roots: tuple[str, ...]  # resolved
    allow_devices: bool = False
    urls: tuple[S3Url, ...] = ()  # allowed s3:// prefixes

    @classmethod
    def of(cls, folders: Iterable[str], allow_devices: bool = False) -> AllowedPaths:
        folders = list(folders)
        roots = tuple(dict.fromkeys(os.path.realpath(f) for f in folders if not is_url(f)))
        urls = tuple(dict.fromkeys(parse_s3_url(f) for f in folders if is_url(f)))
        return cls(roots, allow_devices, urls)

    def contains(self, resolved: str) -> bool:
        for root in self.roots:
            if root == "/" or resolved == root or resolved.startswith(root + "/"):
                return True
        return False

    def _inside(self, path: str, what: str) -> str:
        """``path`` resolved, or ForbiddenPath (one message, whether it exists or not)."""
        if "\x00" in path:
            raise ForbiddenPath(f"{what} {path!r} is not a plain file name")
        if not os.path.isabs(path):
            raise UsageError(f"{what} {path!r} must be an absolute path")
        resolved = os.path.realpath(path)
        if not self.contains(resolved):
            raise ForbiddenPath(
                f"{what} {_show(path)} is outside the folders this daemon may use (--allow-path)"
            )
        return resolved

    # -- one function per kind -------------------------------------------------------

    def output(self, path: str) -> str:
        """A repository folder, returned resolved; or an s3:// URL, returned in its one
        spelling (a malformed URL is a UsageError)."""
        if is_url(path):
            url = parse_s3_url(path)
            if not any(allowed.contains(url) for allowed in self.urls):
                raise ForbiddenPath(
                    f"repository {url} is outside the URLs this daemon may use (--allow-path)"
                )
            return str(url)
        return self._inside(path, "repository")

    def restore_target(self, path: str) -> str:
        """The file a restore writes; returns the resolved target."""
        if not os.path.isabs(path):
            raise UsageError(f"'to' must be an absolute path, not {path!r}")
        name = os.path.basename(path)
        if name in ("", ".", ".."):
            raise UsageError(f"'to' must name a file, not {path!r}")
        folder = self._inside(os.path.dirname(path), "restore folder")
        target = os.path.join(folder, name)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return target
        except OSError:
            return target  # the restore itself reports why it cannot write there
        if stat.S_ISREG(st.st_mode):
            return target
        if self.allow_devices:
            resolved = self._inside(target, "restore target")
            mode = os.stat(resolved).st_mode
            if stat.S_ISBLK(mode) or stat.S_ISREG(mode):
                return resolved
        raise ForbiddenPath(
            f"restore target {path} is not a regular file"
            + ("" if self.allow_devices else " (block devices need --allow-devices)")
        )

    def qcow2_chain(self, image: str) -> list[str]:
        """The image and every file its backing chain and data files name, each checked
        before the next is read; returns the resolved files."""
        checked: list[str] = []
        opened: str = image  # the name as QEMU will open it
        fmt: str | None = "qcow2"
        what = "qcow2 image"
        for _ in range(MAX_CHAIN_DEPTH):
            resolved = self._inside(opened, what)
            checked.append(resolved)
            if fmt == "raw":
                return checked
            try:
                header = read_qcow2_header(resolved)
            except FileNotFoundError:
                return checked  # opening it reports that it does not exist
            except OSError:
                return checked  # likewise for a file we cannot read
            if header is None:
                if fmt is None:
                    raise ForbiddenPath(
                        f"backing file {_show(opened)} has no recorded format and is not qcow2; "
                        "record it (qemu-img rebase -u -F raw ...)"
                    )
                return checked  # not qcow2: QEMU refuses to open it as one
            folder = os.path.dirname(opened)
            if header.data_file is not None:
                checked += self._data_file(header.data_file, folder, opened)
            if header.backing is None:
                return checked
            name = header.backing
            if has_protocol(name):
                raise ForbiddenPath(
                    f"backing file {name!r} of {_show(opened)} is not a plain file name "
                    "(json: and protocols are refused)"
                )
            if header.backing_format not in (None, "raw", "qcow2"):
                raise ForbiddenPath(
                    f"backing file {name!r} of {_show(opened)} has format "
                    f"{header.backing_format!r}; "
                    "only raw and qcow2 backing files are allowed"
                )
            opened = name if os.path.isabs(name) else os.path.join(folder, name)
            fmt = header.backing_format
            what = "backing file"
        raise ForbiddenPath(f"the backing chain of {image} is deeper than {MAX_CHAIN_DEPTH}")

    def _data_file(self, name: str, folder: str, image: str) -> list[str]:
        if has_protocol(name):
            raise ForbiddenPath(
                f"data file {name!r} of {_show(image)} is not a plain file name "
                "(json: and protocols are refused)"
            )
        if os.path.isabs(name):
            return [self._inside(name, "data file")]
        # QEMU may resolve a relative name against the image's folder or its own working
        # folder: both must be allowed.
        return [
            self._inside(os.path.join(folder, name), "data file"),
            self._inside(os.path.abspath(name), "data file"),
        ]

    def qemu_sockets(self, qmp: str, nbd: str | None) -> None:
        self._inside(qmp, "QMP socket")
        if nbd is not None:
            self._inside(nbd, "NBD socket")

    def libvirt_uri(self, locator: str) -> None:
        """A libvirt URI may name any unix socket (``?socket=``): it must be allowed."""
        from urllib.parse import parse_qs, urlsplit

        from hypersdk.providers.libvirt import parse

        uri = parse(locator).uri
        for sock in parse_qs(urlsplit(uri).query).get("socket", []):
            self._inside(sock, "libvirt socket")

    def vm_path(self, locator: str) -> None:
        """Check the files of a ``qemu:`` or ``qcow2:`` locator; vSphere paths pass."""
        from hypersdk.providers.factory import LIBVIRT_PREFIX, QEMU_PREFIXES

        if locator.strip().startswith(LIBVIRT_PREFIX):
            self.libvirt_uri(locator)
            return
        if not locator.startswith(QEMU_PREFIXES):
            return
        # The provider's own parser, so that both read the locator the same way.
        from hypersdk.providers.qemu._factory import _split

        scheme, path, options = _split(locator)
        if scheme == "qcow2":
            self.qcow2_chain(path)
        else:
            self.qemu_sockets(path, options.get("nbd") or None)
