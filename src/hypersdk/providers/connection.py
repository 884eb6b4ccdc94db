"""How to reach a vSphere endpoint. Shared by the CLI, the daemon and the provider.

Settings come from flags first, then ``HYPERSDK_VSPHERE_*`` variables, then the
``GOVC_*`` variables vSphere admins already have set. The password never appears in
``repr``, logs, JSON or metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from hypersdk.errors import UsageError

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class VsphereSettings:
    server: str  # https://host/sdk
    username: str
    password: str = field(repr=False)
    insecure: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        server: str | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool | None = None,
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
        if not username:
            raise UsageError(
                "vSphere needs a user name: --username, HYPERSDK_VSPHERE_USERNAME or GOVC_USERNAME"
            )
        return cls(server=server, username=username, password=password, insecure=insecure)
