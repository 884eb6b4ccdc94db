"""One pyVmomi session per run: log in, hand out the session cookie, log out at close.

The password is used once, for the login call, and is never part of a message, a repr
or the object itself after login.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from hypersdk.errors import ConnectionFailed, HyperSDKError, UsageError
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.vsphere._faults import fault_message, translate

log = logging.getLogger(__name__)

SESSION_COOKIE = "vmware_soap_session"


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: ``host`` for messages, ``netloc`` for URLs."""

    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_server(server: str) -> Endpoint:
    """``host``, ``host:port``, ``https://host[:port][/sdk]`` (a ``user:pass@`` part, as
    govc allows in GOVC_URL, is dropped here; it never reaches a message)."""
    text = server.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 443
    except ValueError:
        raise UsageError("the vSphere server is not a valid host or https:// URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(
            f"the vSphere server must be a host name or https:// URL, not {parts.scheme}://"
        )
    path = parts.path if parts.path not in ("", "/") else "/sdk"
    return Endpoint(parts.hostname, port, path)


class VsphereConnection:
    """A logged-in pyVmomi service instance."""

    def __init__(self, si: Any, endpoint: Endpoint, insecure: bool) -> None:
        self.si = si
        self.endpoint = endpoint
        self.insecure = insecure
        self.content = si.RetrieveContent()
        self._closed = False

    @classmethod
    def connect(cls, settings: VsphereSettings) -> VsphereConnection:
        ep = parse_server(settings.server)
        where = f"{ep.host}:{ep.port}"
        kwargs: dict[str, Any] = {}
        if settings.insecure:
            kwargs["disableSslCertValidation"] = True
        else:
            kwargs["sslContext"] = ssl.create_default_context()
        try:
            si = SmartConnect(  # type: ignore[no-untyped-call]
                host=ep.host,
                port=ep.port,
                path=ep.path,
                user=settings.username,
                pwd=settings.password,
                **kwargs,
            )
        except vim.fault.InvalidLogin as err:
            raise ConnectionFailed(
                f"vSphere {where} refused the login of user {settings.username!r}: "
                "wrong user name or password"
            ) from err
        except ssl.SSLCertVerificationError as err:
            raise ConnectionFailed(
                f"cannot verify the TLS certificate of vSphere {where} ({err.verify_message}); "
                "install its CA certificate or pass --insecure (GOVC_INSECURE=1)"
            ) from err
        except ssl.SSLError as err:
            raise ConnectionFailed(
                f"TLS error connecting to vSphere {where}: {err.reason}"
            ) from err
        except OSError as err:
            raise ConnectionFailed(
                f"cannot connect to vSphere {where}: {err.strerror or err}"
            ) from err
        except vmodl.MethodFault as err:
            raise ConnectionFailed(
                f"vSphere {where} refused the login: {fault_message(err)}"
            ) from err
        except HyperSDKError:
            raise
        except Exception as err:  # pyVmomi raises a bare Exception for "not a VIM server"
            text = " ".join(str(err).replace(settings.password or "\0", "***").split())
            raise ConnectionFailed(f"cannot connect to vSphere {where}: {text}") from err
        return cls(si, ep, settings.insecure)

    def translate(self, what: str) -> contextlib.AbstractContextManager[None]:
        return translate(what, f"{self.endpoint.host}:{self.endpoint.port}")

    def session_cookie(self) -> tuple[str, str]:
        """(name, value) of the SOAP session cookie, value as the server sent it."""
        raw = str(getattr(self.si._stub, "cookie", "") or "")
        first = raw.split(";", 1)[0].strip()
        name, sep, value = first.partition("=")
        if not sep or name.strip() != SESSION_COOKIE or not value:
            raise ConnectionFailed(
                f"vSphere {self.endpoint.host} gave no {SESSION_COOKIE} cookie for datastore reads"
            )
        return SESSION_COOKIE, value.strip()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            Disconnect(self.si)  # type: ignore[no-untyped-call]
        except Exception as err:  # logout is best effort: the session times out anyway
            log.debug("vSphere logout failed: %s", fault_message(err))
