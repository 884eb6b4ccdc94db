"""A real libvirtd (and virtlogd) for the libvirt provider tests, started and stopped by
pid, with its sockets in a temp folder, and small domains with one qcow2 disk each (no
guest OS: QEMU runs the firmware only; KVM when QEMU's user may open /dev/kvm, else TCG).

libvirt running as root keeps its domain state in the system paths (/run/libvirt/qemu,
/etc/libvirt/qemu): each domain has a unique name and is undefined, with its checkpoint
records, when its test ends.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypersdk.processes import stop_process

MiB = 1024 * 1024
QEMU_USER = "libvirt-qemu"
SYSTEM_LOGD = "/run/libvirt/virtlogd-sock"
SYSTEM_LIBVIRTD = "/run/libvirt/libvirt-sock"
NAME_PREFIX = "hsdk-test-"  # the test domains' names: only these are ever reaped


def why_not() -> str:
    """Why libvirtd cannot run here, or "" when it can."""
    if os.geteuid() != 0:
        return "the libvirt tests start a system libvirtd: they need root"
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (make setup installs it)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (make setup installs it)"
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        return f"user {QEMU_USER} does not exist (make setup creates it)"
    return ""


def kvm_usable() -> bool:
    """Whether QEMU's user may open /dev/kvm read-write."""
    try:
        st = os.stat("/dev/kvm")
        user = pwd.getpwnam(QEMU_USER)
    except (OSError, KeyError):
        return False
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if QEMU_USER in g.gr_mem}
    if st.st_uid == user.pw_uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in groups:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _wait_socket(path: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while not _accepts(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start: {text}")
        time.sleep(0.05)


class Libvirtd:
    """``libvirtd`` and ``virtlogd`` of this test session (or the system's when they
    already run: a second one could not take the QEMU driver's state)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hypersdk-lvtest-"))
        os.chmod(self.dir, 0o711)  # QEMU (libvirt-qemu) reaches the images below
        self._procs: list[subprocess.Popen[bytes]] = []
        self.uri = "qemu:///system"

    def start(self) -> Libvirtd:
        if not _accepts(SYSTEM_LOGD):
            conf = self.dir / "virtlogd.conf"
            conf.write_text(f'log_outputs = "3:file:{self.dir}/virtlogd.log"\n')
            self._spawn(
                ["virtlogd", "-f", str(conf), "-p", str(self.dir / "virtlogd.pid")],
                SYSTEM_LOGD,
                "virtlogd",
                self.dir / "virtlogd.log",
            )
        if _accepts(SYSTEM_LIBVIRTD):
            return self
        conf = self.dir / "libvirtd.conf"
        conf.write_text(
            f'unix_sock_dir = "{self.dir}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.dir}/libvirtd.log"\n'
        )
        sock = str(self.dir / "libvirt-sock")
        self._spawn(
            ["libvirtd", "-f", str(conf), "-p", str(self.dir / "libvirtd.pid")],
            sock,
            "libvirtd",
            self.dir / "libvirtd.log",
        )
        self.uri = f"qemu:///system?socket={sock}"
        self.reap()
        return self

    def reap(self) -> None:
        """Destroy and undefine the test domains of an earlier run that was killed: their
        QEMU outlives libvirtd, which finds them again when it starts."""
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                if not dom.name().startswith(NAME_PREFIX):
                    continue
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        finally:
            conn.close()

    def _spawn(self, argv: list[str], sock: str, what: str, log: Path) -> None:
        proc = subprocess.Popen(
            argv,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / f"{what}.err", "wb"),  # noqa: SIM115
        )
        self._procs.append(proc)
        _wait_socket(sock, proc, what, log)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc, grace=15)
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


DOMAIN_XML = """<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
{overrides}
  </qemu:override>
</domain>"""

DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>
      <alias name='ua-{dev}'/>
    </disk>"""

# The test writes to the disk through QEMU's monitor (HMP qemu-io), beside the guest's
# device: the device must share write access for that.
OVERRIDE_XML = """    <qemu:device alias='ua-{dev}'>
      <qemu:frontend><qemu:property name='share-rw' type='bool' value='true'/></qemu:frontend>
    </qemu:device>"""


class Domain:
    """A defined domain with qcow2 disks ``vda``, ``vdb``...; undefined on ``close``."""

    def __init__(self, daemon: Libvirtd, size: int = 16 * MiB, disks: int = 1) -> None:
        import libvirt

        self.daemon = daemon
        self.name = f"{NAME_PREFIX}{secrets.token_hex(3)}"
        self.folder = daemon.dir / self.name
        self.folder.mkdir()
        os.chmod(self.folder, 0o711)
        self.devs = [f"vd{chr(ord('a') + i)}" for i in range(disks)]
        self.paths = {d: self.folder / f"{d}.qcow2" for d in self.devs}
        for path in self.paths.values():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True
            )
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # raised, not printed
        self.conn: Any = libvirt.open(daemon.uri)
        self.dom: Any = self.conn.defineXML(self.xml())
        self.locator = f"libvirt:{self.name}?connect={daemon.uri}"

    def xml(self) -> str:
        return DOMAIN_XML.format(
            kind="kvm" if kvm_usable() else "qemu",
            name=self.name,
            disks="\n".join(DISK_XML.format(path=p, dev=d) for d, p in self.paths.items()),
            overrides="\n".join(OVERRIDE_XML.format(dev=d) for d in self.devs),
        )

    def start(self) -> None:
        self.dom.create()

    def stop(self) -> None:
        if self.dom.isActive():
            self.dom.destroy()

    def hmp(self, command: str) -> str:
        import libvirt_qemu

        return str(
            libvirt_qemu.qemuMonitorCommand(
                self.dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            )
        )

    def io(self, command: str, dev: str = "vda") -> None:
        """Write to a disk of the running domain (``qemu-io`` through the monitor)."""
        out = self.hmp(f'qemu-io {self.node(dev)} "{command}"')
        assert "rror" not in out, out

    def node(self, dev: str) -> str:
        """The format node libvirt gave the disk (``libvirt-<index>-format``)."""
        import xml.etree.ElementTree as ET

        root = ET.fromstring(self.dom.XMLDesc(0))
        for disk in root.findall("./devices/disk"):
            target = disk.find("target")
            source = disk.find("source")
            if target is not None and source is not None and target.get("dev") == dev:
                return f"libvirt-{source.get('index')}-format"
        raise AssertionError(f"no disk {dev}")

    def checkpoint_names(self) -> list[str]:
        return sorted(c.getName() for c in self.dom.listAllCheckpoints(0))

    def job_active(self) -> bool:
        import libvirt

        try:
            self.dom.backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return False
        return True

    def close(self) -> None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            if self.job_active():
                self.dom.abortJob()
        with contextlib.suppress(libvirt.libvirtError):
            self.stop()
        with contextlib.suppress(libvirt.libvirtError):
            self.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def domain(daemon: Libvirtd, **kw: Any) -> Iterator[Domain]:
    d = Domain(daemon, **kw)
    try:
        yield d
    finally:
        d.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
