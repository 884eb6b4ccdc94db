"""Start, stop and drive the vSphere lab (vcsim with changed block tracking).

The lab is a test and demo fixture, never used by product code paths. A state folder
holds everything of one lab instance::

    <state>/vcsim.pid         pid of the running simulator
    <state>/settings.json     connection settings, written by the simulator once it serves
    <state>/vcsim.log         its log
    <state>/vcsim-cert.pem    its (self-signed) TLS certificate
    <state>/datastore/        the folder behind datastore LocalDS_0 (VM files, -flat.vmdk)

The lab is stopped by its pid (checked against the binary's path), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hypersdk.errors import (
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    ProviderError,
    UsageError,
)
from hypersdk.lab.build import LabBuild, default_source_dir
from hypersdk.processes import stop_process

DEFAULT_STATE_DIR = Path("~/.hypersdk/lab")
STATE_ENV = "HYPERSDK_LAB_DIR"
_MARKER = ".hypersdk-lab"


def default_state_dir() -> Path:
    """``$HYPERSDK_LAB_DIR`` or ``~/.hypersdk/lab``."""
    env = os.environ.get(STATE_ENV)
    return Path(env).expanduser() if env else DEFAULT_STATE_DIR.expanduser()


@dataclass(frozen=True)
class LabSettings:
    """How to connect to a running lab (the simulator writes these)."""

    url: str
    host: str
    port: int
    username: str
    password: str
    pid: int
    datacenter: str
    datastore: str
    datastore_dir: Path
    lab_url: str
    cert_file: Path | None
    thumbprint: str
    block_size: int
    insecure: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabSettings:
        return cls(
            url=str(data["url"]),
            host=str(data["host"]),
            port=int(data["port"]),
            username=str(data["username"]),
            password=str(data["password"]),
            pid=int(data["pid"]),
            datacenter=str(data["datacenter"]),
            datastore=str(data["datastore"]),
            datastore_dir=Path(data["datastore_dir"]),
            lab_url=str(data["lab_url"]),
            cert_file=Path(data["cert_file"]) if data.get("cert_file") else None,
            thumbprint=str(data.get("thumbprint", "")),
            block_size=int(data["block_size"]),
            insecure=bool(data.get("insecure", True)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "insecure": self.insecure,
            "pid": self.pid,
            "datacenter": self.datacenter,
            "datastore": self.datastore,
            "datastore_dir": str(self.datastore_dir),
            "lab_url": self.lab_url,
            "cert_file": str(self.cert_file) if self.cert_file else None,
            "thumbprint": self.thumbprint,
            "block_size": self.block_size,
        }

    def govc_env(self) -> dict[str, str]:
        """The settings as govc's environment variables."""
        return {
            "GOVC_URL": self.url,
            "GOVC_USERNAME": self.username,
            "GOVC_PASSWORD": self.password,
            "GOVC_INSECURE": "1" if self.insecure else "0",
        }


@dataclass(frozen=True)
class LabDisk:
    """One virtual disk of a lab VM (its live state)."""

    key: int
    label: str
    file: str  # "[LocalDS_0] vm/vm.vmdk"
    flat_file: str  # "[LocalDS_0] vm/vm-flat.vmdk"
    flat_path: Path  # local path of the flat extent
    url_path: str  # "/folder/vm/vm-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"
    capacity_bytes: int
    change_id: str
    redo_blocks: int = 0  # blocks written while the VM has snapshots (not yet in the flat file)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabDisk:
        return cls(
            key=int(d["key"]),
            label=str(d["label"]),
            file=str(d["file"]),
            flat_file=str(d["flat_file"]),
            flat_path=Path(d["flat_path"]),
            url_path=str(d["url_path"]),
            capacity_bytes=int(d["capacity_bytes"]),
            change_id=str(d["change_id"]),
            redo_blocks=int(d.get("redo_blocks", 0)),
        )


@dataclass(frozen=True)
class LabVm:
    """One VM of the lab."""

    name: str
    path: str  # inventory path, "/DC0/vm/NAME"
    moref: str
    power_state: str
    cbt_enabled: bool
    snapshots: int
    disks: tuple[LabDisk, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabVm:
        return cls(
            name=str(data["name"]),
            path=str(data["path"]),
            moref=str(data["moref"]),
            power_state=str(data["power_state"]),
            cbt_enabled=bool(data["cbt_enabled"]),
            snapshots=int(data.get("snapshots", 0)),
            disks=tuple(LabDisk.from_json(d) for d in data.get("disks") or []),
        )

    def disk(self, key: int | None = None) -> LabDisk:
        """The disk with this device key (the first disk if key is None)."""
        for d in self.disks:
            if key is None or d.key == key:
                return d
        raise NotFoundError(f"VM {self.path} has no disk with key {key}")


@dataclass(frozen=True)
class LabStatus:
    running: bool
    pid: int | None
    state_dir: Path
    settings: LabSettings | None
    message: str


@dataclass(frozen=True)
class VmSpec:
    """A VM for the lab to create: name and disk sizes in bytes."""

    name: str
    disks: tuple[int, ...]

    def to_flag(self) -> str:
        return f"{self.name}:" + ",".join(str(s) for s in self.disks)


class VcsimLab:
    """Controller of one lab instance in a state folder."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        source_dir: Path | str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser() if state_dir else default_state_dir()
        self._build = LabBuild(Path(source_dir) if source_dir else default_source_dir())
        self._proc: subprocess.Popen[bytes] | None = None

    # -- files of the state folder -------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.state_dir / "vcsim.pid"

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "settings.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "vcsim.log"

    @property
    def datastore_dir(self) -> Path:
        return self.state_dir / "datastore"

    @property
    def binary(self) -> Path:
        return self._build.binary

    # -- build ---------------------------------------------------------------------
    def build(self, *, force: bool = False) -> Path:
        """Build the simulator binary if missing or outdated (offline, ~15-30 s cold)."""
        return self._build.build(force=force)

    # -- process -------------------------------------------------------------------
    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_ours(self, pid: int) -> bool:
        """True if pid is a live (not zombie) process running the lab binary."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        if state in ("Z", "X"):
            return False
        return bool(cmdline) and Path(os.fsdecode(cmdline[0])).name == self.binary.name

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def status(self) -> LabStatus:
        """Whether the lab of this state folder runs, and its settings."""
        self._reap()
        pid = self._read_pid()
        if pid is None:
            return LabStatus(False, None, self.state_dir, None, "not running")
        if not self._is_ours(pid):
            return LabStatus(False, pid, self.state_dir, None, f"not running (stale pid {pid})")
        settings = self._load_settings()
        if settings is None or settings.pid != pid:
            return LabStatus(True, pid, self.state_dir, None, f"starting (pid {pid})")
        return LabStatus(True, pid, self.state_dir, settings, f"running (pid {pid})")

    def _load_settings(self) -> LabSettings | None:
        try:
            return LabSettings.from_json(json.loads(self.settings_file.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def settings(self) -> LabSettings:
        """Settings of the running lab; ConnectionFailed if it does not run."""
        st = self.status()
        if not st.running or st.settings is None:
            raise ConnectionFailed(
                f"the vSphere lab in {self.state_dir} is {st.message}; "
                "start it with 'hyperctl lab start'"
            )
        return st.settings

    def start(
        self,
        *,
        port: int = 0,
        vms: Sequence[VmSpec] = (),
        cbt: bool = False,
        max_changed_areas: int = 0,
        block_size: int = 64 * 1024,
        username: str = "user",
        password: str = "pass",
        timeout: float = 30.0,
    ) -> LabSettings:
        """Build if needed, start the simulator in the background, wait until it serves."""
        st = self.status()
        if st.running:
            raise ConflictError(f"the vSphere lab in {self.state_dir} is already {st.message}")
        binary = self.build()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker = self.state_dir / _MARKER
        if self.datastore_dir.exists():
            if not marker.exists():
                raise ConflictError(
                    f"{self.datastore_dir} exists but was not made by the lab; remove it"
                )
            shutil.rmtree(self.datastore_dir)  # the lab's VMs live only as long as the lab
        marker.write_text("state folder of the HyperSDK vSphere lab\n")
        for stale in (self.settings_file, self.pid_file):
            stale.unlink(missing_ok=True)
        args = [
            str(binary),
            f"-listen=127.0.0.1:{port}",
            f"-settings={self.settings_file}",
            f"-datastore-dir={self.datastore_dir}",
            f"-username={username}",
            f"-password={password}",
            f"-block-size={block_size}",
            f"-max-changed-areas={max_changed_areas}",
            f"-cbt={'true' if cbt else 'false'}",
        ]
        args += [f"-vm={vm.to_flag()}" for vm in vms]
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI that started it
            )
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                self.pid_file.unlink(missing_ok=True)
                raise ProviderError(
                    f"the vSphere lab exited with status {proc.returncode}: {self._last_log_line()}"
                )
            settings = self._load_settings()
            if settings is not None and settings.pid == proc.pid:
                return settings
            time.sleep(0.05)
        self.stop()
        raise ProviderError(f"the vSphere lab did not start within {timeout:.0f} s")

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the lab by its pid; False if it was not running."""
        pid = self._read_pid()
        stopped = False
        if pid is not None:
            # _is_ours guards against a reused pid: only the lab binary is signalled
            stopped = stop_process(pid, grace=timeout, alive=self._is_ours)
        self._reap()
        for path in (self.pid_file, self.settings_file):
            path.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> VcsimLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs (the lab's /lab endpoints) ------------------------------------------
    @contextlib.contextmanager
    def _client(self) -> Iterator[tuple[httpx.Client, str]]:
        settings = self.settings()
        with httpx.Client(verify=False, timeout=60.0) as client:
            yield client, settings.lab_url

    def _check(self, resp: httpx.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 404 and "VM not found" in str(body.get("error", "")):
            raise NotFoundError(str(body["error"]))
        if resp.status_code == 400:
            raise UsageError(f"lab: {body.get('error', resp.text.strip())}")
        if resp.status_code == 409:
            raise ConflictError(f"lab: {body.get('error', resp.text.strip())}")
        if resp.status_code >= 300:
            raise ProviderError(
                f"lab endpoint {resp.request.url.path} failed with HTTP {resp.status_code}: "
                f"{body.get('error', resp.text.strip())}"
            )
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            with self._client() as (client, base):
                return self._check(client.request(method, base + path, **kwargs))
        except httpx.HTTPError as err:
            raise ConnectionFailed(f"cannot reach the vSphere lab: {err}") from err

    def vms(self) -> list[LabVm]:
        """All VMs with their disks (live state)."""
        data = self._request("GET", "/vms")
        return [LabVm.from_json(v) for v in data.get("vms") or []]

    def vm(self, vm: str) -> LabVm:
        """One VM by inventory path, name or moref."""
        return LabVm.from_json(self._request("GET", "/vm", params={"vm": vm}))

    def config(
        self,
        *,
        max_changed_areas: int | None = None,
        max_epochs: int | None = None,
        cbt_needs_stun: bool | None = None,
        drop_changed_area: bool | None = None,
    ) -> dict[str, int | bool]:
        """Read (no arguments) or change the tracking knobs; returns the current ones.

        ``max_changed_areas``: at most N areas per QueryChangedDiskAreas reply (0: all);
        ``max_epochs``: change ids kept per disk; ``cbt_needs_stun``: CBT enabled on a
        running VM becomes active at the next snapshot or power on;
        ``drop_changed_area``: simulate a CBT bug, every answer to a query with a change
        id leaves out its first changed area (for the CBT audit's tests).
        """
        changes: dict[str, int | bool] = {}
        if max_changed_areas is not None:
            changes["max_changed_areas"] = max_changed_areas
        if max_epochs is not None:
            changes["max_epochs"] = max_epochs
        if cbt_needs_stun is not None:
            changes["cbt_needs_stun"] = cbt_needs_stun
        if drop_changed_area is not None:
            changes["drop_changed_area"] = drop_changed_area
        if not changes:
            return dict(self._request("GET", "/config"))
        return dict(self._request("POST", "/config", json=changes))

    def reset_cbt(self, vm: str) -> list[LabDisk]:
        """Give the VM's disks a new tracking uuid: earlier change ids become invalid."""
        data = self._request("POST", "/reset-cbt", params={"vm": vm})
        return [LabDisk.from_json(d) for d in data.get("disks") or []]

    def write(
        self,
        vm: str,
        offset: int,
        data: bytes | None = None,
        length: int | None = None,
        *,
        disk_key: int | None = None,
        zero: bool = False,
        seed: int | None = None,
    ) -> bytes:
        """Write "guest" data into a VM's disk at offset and return the bytes written.

        Give either ``data`` or ``length``: with ``length`` the lab writes random bytes
        (reproducible with ``seed``) or, with ``zero=True``, zeros.
        """
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        if (data is None) == (length is None):
            raise UsageError("give either data or length")
        params: dict[str, str | int] = {"vm": vm, "offset": offset}
        if disk_key is not None:
            params["disk"] = disk_key
        if data is None:
            assert length is not None
            if length < 0:
                raise UsageError(f"length must be >= 0, got {length}")
            if zero:
                params.update(fill="zero", length=length)
                self._request("POST", "/write", params=params)
                return bytes(length)
            data = random.Random(seed).randbytes(length) if seed is not None else os.urandom(length)
        self._request(
            "POST",
            "/write",
            params=params,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return data

    def folder_url(self, disk: LabDisk) -> str:
        """The https URL of a disk's flat file on the /folder endpoint."""
        s = self.settings()
        return f"https://{s.host}:{s.port}{disk.url_path}"


def parse_size(text: str) -> int:
    """'4096', '64K', '16M', '1G' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in units:
        mult, t = units[t[-1]], t[:-1]
    try:
        value = int(t)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (e.g. 4096, 64K, 16M, 1G)") from None
    return value * mult


def parse_vm_spec(text: str) -> VmSpec:
    """'NAME:SIZE[,SIZE...]' -> VmSpec."""
    name, sep, sizes = text.partition(":")
    if not sep or not name or not sizes:
        raise UsageError(f"not a VM spec: {text!r} (NAME:SIZE[,SIZE...], e.g. web:1G,64M)")
    disks = tuple(parse_size(s) for s in sizes.split(","))
    if any(d <= 0 or d % 1024 for d in disks):
        raise UsageError(f"disk sizes must be positive multiples of 1K: {text!r}")
    return VmSpec(name, disks)


__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_ENV",
    "LabDisk",
    "LabSettings",
    "LabStatus",
    "LabVm",
    "VcsimLab",
    "VmSpec",
    "default_state_dir",
    "parse_size",
    "parse_vm_spec",
]
