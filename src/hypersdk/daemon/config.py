"""The daemon's settings, from flags first, then ``HYPERSDK_*`` variables, then an
optional TOML file (``--config``), then defaults.

TOML layout (every key optional)::

    listen = "127.0.0.1"
    port = 8080
    output = "/backups/repo"          # default repository
    state_dir = "/var/lib/hypersdk"
    api_token = "..."                 # at least 16 characters; default: <state_dir>/api-token
    max_concurrent_exports = 2
    max_event_streams = 32
    allow_paths = ["/backups", "/var/lib/vms"]   # folders requests may name (docs/api.md)
    allow_devices = false             # may a restore write to a block device?
    tls_cert = "/etc/hypersdk/cert.pem"   # required to listen on a non-loopback address
    tls_key = "/etc/hypersdk/key.pem"
    password_file = "/etc/hypersdk/repo-password"   # encrypted repositories' password
                                      # (first line; else HYPERSDK_PASSWORD); mode 0600
    policies_file = "/etc/hypersdk/policies.yaml"   # backup policies (YAML or .toml)
    broker = "redis://10.0.0.5:6379/0"   # distributed mode: jobs run on hyperworker
                                      # processes (docs/fleet.md); default: in this process

    [fleet]                           # distributed mode only
    datastore_limit = 2               # exports at once per datastore, fleet-wide (0: none)
    host_limit = 4                    # ... per ESXi host (QEMU: per machine)
    lease_seconds = 30                # a dead worker's job is sent again after this
    visibility_timeout = 600          # Redis re-delivers an unacknowledged task after this

    [[policies]]                      # policies may also be written here (daemon/policies.py)
    name = "nightly"
    vms = ["qcow2:/var/lib/vms/web.qcow2"]
    schedule = "0 2 * * *"
    retention = {keep_daily = 7}

The file may hold the token and the vSphere password: it must not be readable (or
writable) by group or others, else the daemon refuses to start.

    [vsphere]
    server = "https://vcenter/sdk"
    username = "backup@vsphere.local"
    password = "..."
    insecure = false
    ca_file = "/etc/hypersdk/vcenter-ca.pem"   # trusted besides the system store
    foreign_snapshot_max_age_hours = 24       # another host's backup snapshot is busy until then
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypersdk.daemon.token import check_token
from hypersdk.errors import UsageError
from hypersdk.providers.connection import (
    CA_FILE_ENV,
    FOREIGN_SNAPSHOT_MAX_AGE_ENV,
    VsphereSettings,
)
from hypersdk.repository.keys import Password
from hypersdk.repository.storage import is_url
from hypersdk.repository.storage.urls import parse_s3_url

DEFAULT_LISTEN = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_MAX_EVENT_STREAMS = 32


@dataclass(frozen=True)
class DaemonConfig:
    listen: str = DEFAULT_LISTEN
    port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=lambda: Path.home() / ".hypersdk")
    output: str | None = None  # default repository
    api_token: str | None = field(default=None, repr=False)
    max_concurrent_exports: int = DEFAULT_MAX_CONCURRENT
    max_event_streams: int = DEFAULT_MAX_EVENT_STREAMS
    vsphere: VsphereSettings | None = None
    allow_paths: tuple[str, ...] = ()  # besides ``output``
    allow_devices: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # The password of encrypted repositories (else HYPERSDK_PASSWORD): never a request
    # field, never in a job record.
    password_file: str | None = None

    @property
    def repository_password(self) -> Password:
        return Password(file=self.password_file)

    policies_file: str | None = None  # YAML, or TOML when it ends in .toml
    policies: tuple[Any, ...] = ()  # the config file's [[policies]] tables, checked at start
    # Distributed mode (daemon/fleet.py): None runs jobs in this process.
    broker: str | None = None
    fleet_datastore_limit: int = 2
    fleet_host_limit: int = 4
    fleet_lease_seconds: float = 30.0
    fleet_visibility_timeout: float = 600.0

    def check(self) -> DaemonConfig:
        """Refuse settings that cannot work or are unsafe; returns self."""
        if not 1 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is not between 1 and 65535")
        if not 1 <= self.max_concurrent_exports <= 64:
            raise UsageError("max_concurrent_exports must be 1 to 64")
        if not 1 <= self.max_event_streams <= 1024:
            raise UsageError("max_event_streams must be 1 to 1024")
        if self.api_token is not None:
            check_token(self.api_token, "HYPERSDK_API_TOKEN or api_token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        for name, file in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if file is not None and not os.path.isfile(file):
                raise UsageError(f"{name} {file} is not a readable file")
        if self.tls_cert is None and not is_loopback(self.listen):
            # The token would cross the network in clear text.
            raise UsageError(
                f"refusing to listen on non-loopback address {self.listen} without TLS: "
                "give --tls-cert and --tls-key (or tls_cert/tls_key in the config file)"
            )
        for folder in self.allow_paths:
            if not is_url(folder) and not os.path.isdir(folder):
                raise UsageError(f"allowed path {folder} is not an existing folder")
        if self.password_file is not None:
            _check_secret_file(self.password_file, "password_file")
        if self.broker is not None:
            from hypersdk.daemon.fleet import fleet_settings

            fleet_settings(self)  # refuses a bad URL or limit now, in one line
        return self

    @property
    def loopback(self) -> bool:
        return is_loopback(self.listen)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_secret_file(path: str, name: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise UsageError(f"{name} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise UsageError(
            f"{name} {path} is accessible by group or others (mode {mode:04o}): chmod 600 it"
        )


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse the config file, refusing one that group or others may read or write (it
    can hold the API token and the vSphere password)."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise UsageError(
                    f"config file {path} is accessible by group or others (mode {mode:04o}); "
                    "it may hold secrets: chmod 600 it"
                )
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from exc


def _int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{name} must be a whole number")
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {value!r}") from None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number")
    return float(value)


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string")
    return value


def _paths(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        # ":"-separated, except the one of "s3://" (an entry may be an s3:// URL)
        items: list[object] = [p for p in re.split(r":(?!//)", value) if p]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise UsageError(f"{name} must be a list of folders")
    return tuple(_location(_str(p, name)) for p in items)


def _location(value: str) -> str:
    """A folder made absolute, or an s3:// URL checked and spelled one way."""
    if is_url(value):
        return str(parse_s3_url(value))
    return os.path.abspath(os.path.expanduser(value))


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise UsageError(f"{name} must be true or false")


def load_config(
    *,
    listen: str | None = None,
    port: int | None = None,
    state_dir: str | None = None,
    output: str | None = None,
    max_concurrent_exports: int | None = None,
    allow_paths: list[str] | None = None,
    allow_devices: bool | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    policies_file: str | None = None,
    config_file: str | None = None,
    broker: str | None = None,
    env: Mapping[str, str] | None = None,
) -> DaemonConfig:
    """Merge flags (the keyword arguments), the environment and the TOML file."""
    e = os.environ if env is None else env
    toml = read_toml(config_file) if config_file else {}
    vs = toml.get("vsphere", {})
    if not isinstance(vs, dict):
        raise UsageError("[vsphere] in the config file must be a table")

    def pick(flag: object, var: str, key: str) -> object:
        if flag is not None:
            return flag
        if e.get(var):
            return e[var]
        return toml.get(key)

    listen_v = pick(listen, "HYPERSDK_LISTEN", "listen")
    port_v = pick(port, "HYPERSDK_PORT", "port")
    state_v = pick(state_dir, "HYPERSDK_STATE_DIR", "state_dir")
    output_v = pick(output, "HYPERSDK_OUTPUT", "output")
    token_v = pick(None, "HYPERSDK_API_TOKEN", "api_token")
    max_v = pick(
        max_concurrent_exports, "HYPERSDK_MAX_CONCURRENT_EXPORTS", "max_concurrent_exports"
    )
    streams_v = pick(None, "HYPERSDK_MAX_EVENT_STREAMS", "max_event_streams")
    allow_v = pick(allow_paths or None, "HYPERSDK_ALLOW_PATHS", "allow_paths")
    devices_v = pick(allow_devices or None, "HYPERSDK_ALLOW_DEVICES", "allow_devices")
    cert_v = pick(tls_cert, "HYPERSDK_TLS_CERT", "tls_cert")
    key_v = pick(tls_key, "HYPERSDK_TLS_KEY", "tls_key")
    password_file_v = pick(None, "HYPERSDK_PASSWORD_FILE", "password_file")
    policies_v = pick(policies_file, "HYPERSDK_POLICIES_FILE", "policies_file")
    broker_v = pick(broker, "HYPERSDK_BROKER", "broker")
    fleet = toml.get("fleet", {})
    if not isinstance(fleet, dict):
        raise UsageError("[fleet] in the config file must be a table")
    unknown = set(fleet) - {"datastore_limit", "host_limit", "lease_seconds", "visibility_timeout"}
    if unknown:
        raise UsageError(f"unknown key in [fleet]: {', '.join(sorted(unknown))}")
    policy_docs = toml.get("policies", [])
    if not isinstance(policy_docs, list):
        raise UsageError("policies in the config file must be [[policies]] tables")

    # vSphere: TOML values act as defaults below flags/env (VsphereSettings.resolve).
    vs_env = dict(e)
    # A key whose value any of these variables already gives stays as the environment says.
    env_names = {"ca_file": CA_FILE_ENV}
    for key, var in (
        ("server", "HYPERSDK_VSPHERE_URL"),
        ("username", "HYPERSDK_VSPHERE_USERNAME"),
        ("password", "HYPERSDK_VSPHERE_PASSWORD"),
        ("ca_file", CA_FILE_ENV[0]),
    ):
        if key in vs and not any(e.get(v) for v in env_names.get(key, (var,))):
            vs_env[var] = _str(vs[key], f"vsphere.{key}")
    if "foreign_snapshot_max_age_hours" in vs and not e.get(FOREIGN_SNAPSHOT_MAX_AGE_ENV):
        age = vs["foreign_snapshot_max_age_hours"]
        if isinstance(age, bool) or not isinstance(age, int | float):
            raise UsageError("vsphere.foreign_snapshot_max_age_hours must be a number")
        vs_env[FOREIGN_SNAPSHOT_MAX_AGE_ENV] = str(age)
    if "insecure" in vs and not e.get("HYPERSDK_VSPHERE_INSECURE"):
        vs_env["HYPERSDK_VSPHERE_INSECURE"] = "1" if vs["insecure"] is True else "0"
    vsphere = VsphereSettings.resolve(env=vs_env)

    return DaemonConfig(
        listen=_str(listen_v, "listen") if listen_v is not None else DEFAULT_LISTEN,
        port=_int(port_v, "port") if port_v is not None else DEFAULT_PORT,
        state_dir=Path(_str(state_v, "state_dir")).expanduser()
        if state_v is not None
        else Path.home() / ".hypersdk",
        output=_location(_str(output_v, "output")) if output_v is not None else None,
        api_token=_str(token_v, "api_token") or None if token_v is not None else None,
        max_concurrent_exports=_int(max_v, "max_concurrent_exports")
        if max_v is not None
        else DEFAULT_MAX_CONCURRENT,
        max_event_streams=_int(streams_v, "max_event_streams")
        if streams_v is not None
        else DEFAULT_MAX_EVENT_STREAMS,
        vsphere=vsphere,
        allow_paths=_paths(allow_v, "allow_paths") if allow_v is not None else (),
        allow_devices=_bool(devices_v, "allow_devices") if devices_v is not None else False,
        tls_cert=_str(cert_v, "tls_cert") if cert_v is not None else None,
        tls_key=_str(key_v, "tls_key") if key_v is not None else None,
        password_file=_str(password_file_v, "password_file")
        if password_file_v is not None
        else None,
        policies_file=os.path.abspath(os.path.expanduser(_str(policies_v, "policies_file")))
        if policies_v is not None
        else None,
        policies=tuple(policy_docs),
        broker=_str(broker_v, "broker") if broker_v is not None else None,
        fleet_datastore_limit=_int(fleet.get("datastore_limit", 2), "fleet.datastore_limit"),
        fleet_host_limit=_int(fleet.get("host_limit", 4), "fleet.host_limit"),
        fleet_lease_seconds=_number(fleet.get("lease_seconds", 30.0), "fleet.lease_seconds"),
        fleet_visibility_timeout=_number(
            fleet.get("visibility_timeout", 600.0), "fleet.visibility_timeout"
        ),
    ).check()
