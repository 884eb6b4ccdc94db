"""How to reach a vSphere endpoint. Shared by the CLI, the daemon and the provider.

Settings come from flags first, then ``HYPERSDK_VSPHERE_*`` variables, then the
``GOVC_*`` variables vSphere admins already have set. The password never appears in
``repr``, logs, JSON or metadata.

==========================  ==========================================  ====================
field                       environment (first set wins)                default
==========================  ==========================================  ====================
``server``                  ``HYPERSDK_VSPHERE_URL``, ``GOVC_URL``      (none: no vSphere)
``username``                ``HYPERSDK_VSPHERE_USERNAME``,              (required)
                            ``GOVC_USERNAME``
``password``                ``HYPERSDK_VSPHERE_PASSWORD``,              ``""``
                            ``GOVC_PASSWORD``
``insecure``                ``HYPERSDK_VSPHERE_INSECURE``,              off
                            ``GOVC_INSECURE``
``ca_file``                 ``HYPERSDK_VSPHERE_CA_FILE``,               none: the system
                            ``GOVC_TLS_CA_CERTS``                       store alone
``foreign_snapshot_``       ``HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_``      24 (hours)
``max_age_hours``           ``MAX_AGE`` (hours)
==========================  ==========================================  ====================

``ca_file`` is a PEM file of CA certificates trusted *in addition to* the system store,
for the vSphere login and the HTTPS datastore reads alike; several files may be given
separated by ``:`` (as govc reads ``GOVC_TLS_CA_CERTS``). ``insecure`` turns certificate
verification off for both. ``foreign_snapshot_max_age_hours``: a snapshot of this tool
made on another host is taken as a running export of that host until it is this old.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from hypersdk.errors import UsageError

_TRUE = {"1", "true", "yes", "on"}
DEFAULT_FOREIGN_SNAPSHOT_MAX_AGE_HOURS = 24.0
CA_FILE_ENV = ("HYPERSDK_VSPHERE_CA_FILE", "GOVC_TLS_CA_CERTS")
FOREIGN_SNAPSHOT_MAX_AGE_ENV = "HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE"


@dataclass(frozen=True)
class VsphereSettings:
    server: str  # https://host/sdk
    username: str
    password: str = field(repr=False)
    insecure: bool = False
    ca_file: str | None = None  # extra trusted CA certificates (PEM), ":"-separated
    foreign_snapshot_max_age_hours: float = DEFAULT_FOREIGN_SNAPSHOT_MAX_AGE_HOURS

    def __post_init__(self) -> None:
        age = self.foreign_snapshot_max_age_hours
        if not isinstance(age, int | float) or not math.isfinite(age) or age <= 0:
            raise UsageError(
                f"the foreign snapshot max age must be a positive number of hours, not {age!r}"
            )

    @property
    def ca_files(self) -> list[str]:
        """The CA files named by ``ca_file`` (empty when it is unset)."""
        return [p for p in (self.ca_file or "").split(":") if p.strip()]

    @classmethod
    def resolve(
        cls,
        *,
        server: str | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool | None = None,
        ca_file: str | None = None,
        foreign_snapshot_max_age_hours: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> VsphereSettings | None:
        """Settings from arguments and the environment; None when no server is named."""
        e = os.environ if env is None else env
        server = server or e.get("HYPERSDK_VSPHERE_URL") or e.get("GOVC_URL")
        if not server:
            return None
        username = username or e.get("HYPERSDK_VSPHERE_USERNAME") or e.get("GOVC_USERNAME") or ""
        password = (
            password
            if password is not None
            else e.get("HYPERSDK_VSPHERE_PASSWORD") or e.get("GOVC_PASSWORD") or ""
        )
        if insecure is None:
            flag = e.get("HYPERSDK_VSPHERE_INSECURE") or e.get("GOVC_INSECURE") or ""
            insecure = flag.strip().lower() in _TRUE
        if not ca_file:
            ca_file = next((e[k] for k in CA_FILE_ENV if e.get(k, "").strip()), None)
        if foreign_snapshot_max_age_hours is None:
            foreign_snapshot_max_age_hours = _hours(e.get(FOREIGN_SNAPSHOT_MAX_AGE_ENV))
        if not username:
            raise UsageError(
                "vSphere needs a user name: --username, HYPERSDK_VSPHERE_USERNAME or GOVC_USERNAME"
            )
        return cls(
            server=server,
            username=username,
            password=password,
            insecure=insecure,
            ca_file=ca_file,
            foreign_snapshot_max_age_hours=foreign_snapshot_max_age_hours,
        )


def _hours(text: str | None) -> float:
    if text is None or not text.strip():
        return DEFAULT_FOREIGN_SNAPSHOT_MAX_AGE_HOURS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(
            f"{FOREIGN_SNAPSHOT_MAX_AGE_ENV} must be a positive number of hours, not {text!r}"
        )
    return value
