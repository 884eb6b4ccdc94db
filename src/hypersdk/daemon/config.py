"""The daemon's settings, from flags first, then ``HYPERSDK_*`` variables, then an
optional TOML file (``--config``), then defaults.

TOML layout (every key optional)::

    listen = "127.0.0.1"
    port = 8080
    output = "/backups/repo"          # default repository
    state_dir = "/var/lib/hypersdk"
    api_token = "..."
    max_concurrent_exports = 2

    [vsphere]
    server = "https://vcenter/sdk"
    username = "backup@vsphere.local"
    password = "..."
    insecure = false
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypersdk.errors import UsageError
from hypersdk.providers.connection import VsphereSettings

DEFAULT_LISTEN = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_CONCURRENT = 2


@dataclass(frozen=True)
class DaemonConfig:
    listen: str = DEFAULT_LISTEN
    port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=lambda: Path.home() / ".hypersdk")
    output: str | None = None  # default repository
    api_token: str | None = field(default=None, repr=False)
    max_concurrent_exports: int = DEFAULT_MAX_CONCURRENT
    vsphere: VsphereSettings | None = None

    def check(self) -> DaemonConfig:
        """Refuse settings that cannot work or are unsafe; returns self."""
        if not 1 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is not between 1 and 65535")
        if not 1 <= self.max_concurrent_exports <= 64:
            raise UsageError("max_concurrent_exports must be 1 to 64")
        if not self.api_token and not is_loopback(self.listen):
            raise UsageError(
                f"refusing to listen on non-loopback address {self.listen} without an API "
                "token: set HYPERSDK_API_TOKEN (or api_token in the config file)"
            )
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
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


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string")
    return value


def load_config(
    *,
    listen: str | None = None,
    port: int | None = None,
    state_dir: str | None = None,
    output: str | None = None,
    max_concurrent_exports: int | None = None,
    config_file: str | None = None,
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

    # vSphere: TOML values act as defaults below flags/env (VsphereSettings.resolve).
    vs_env = dict(e)
    for key, var in (
        ("server", "HYPERSDK_VSPHERE_URL"),
        ("username", "HYPERSDK_VSPHERE_USERNAME"),
        ("password", "HYPERSDK_VSPHERE_PASSWORD"),
    ):
        if key in vs and not e.get(var):
            vs_env[var] = _str(vs[key], f"vsphere.{key}")
    if "insecure" in vs and not e.get("HYPERSDK_VSPHERE_INSECURE"):
        vs_env["HYPERSDK_VSPHERE_INSECURE"] = "1" if vs["insecure"] is True else "0"
    vsphere = VsphereSettings.resolve(env=vs_env)

    return DaemonConfig(
        listen=_str(listen_v, "listen") if listen_v is not None else DEFAULT_LISTEN,
        port=_int(port_v, "port") if port_v is not None else DEFAULT_PORT,
        state_dir=Path(_str(state_v, "state_dir")).expanduser()
        if state_v is not None
        else Path.home() / ".hypersdk",
        output=_str(output_v, "output") if output_v is not None else None,
        api_token=_str(token_v, "api_token") or None if token_v is not None else None,
        max_concurrent_exports=_int(max_v, "max_concurrent_exports")
        if max_v is not None
        else DEFAULT_MAX_CONCURRENT,
        vsphere=vsphere,
    ).check()
