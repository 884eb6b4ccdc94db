"""One pyVmomi session per run: log in, hand out the session cookie, log out at close.

The password is used once, for the login call, and is never part of a message, a repr
or the object itself after login.

TLS: one ``ssl.SSLContext`` per connection, built by ``tls_context`` from the settings,
serves the SOAP login and every HTTPS datastore read of the connection's sessions: the
system trust store plus the optional CA file(s) of ``VsphereSettings.ca_file``, host
names checked; ``insecure`` turns verification off for both, never for one alone.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from hypersdk.errors import ConnectionFailed, HyperSDKError, ProviderError, UsageError
from hypersdk.providers.connection import CA_FILE_ENV, VsphereSettings
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


def tls_context(settings: VsphereSettings) -> ssl.SSLContext:
    """The TLS context of one connection: system store plus ``settings.ca_files``, or
    no verification at all when ``settings.insecure``."""
    ctx = _default_context(settings.insecure)
    if settings.insecure:
        return ctx
    for path in settings.ca_files:
        try:
            ctx.load_verify_locations(cafile=path)
        except ssl.SSLError as err:  # before OSError, its base class
            raise UsageError(
                f"the vSphere CA file {path} holds no usable PEM certificate ({err.reason})"
            ) from None
        except OSError as err:
            raise UsageError(
                f"cannot read the vSphere CA file {path}: {err.strerror or err}"
            ) from None
    return ctx


def _default_context(insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class VsphereConnection:
    """A logged-in pyVmomi service instance and the TLS context it was made with."""

    def __init__(
        self,
        si: Any,
        endpoint: Endpoint,
        insecure: bool,
        *,
        ssl_context: ssl.SSLContext | None = None,
        foreign_snapshot_max_age: timedelta = timedelta(hours=24),
    ) -> None:
        self.si = si
        self.endpoint = endpoint
        self.insecure = insecure
        # Data reads reuse the login's context: what was verified once is what is read.
        self.ssl_context = ssl_context if ssl_context is not None else _default_context(insecure)
        self.foreign_snapshot_max_age = foreign_snapshot_max_age
        self.content = si.RetrieveContent()
        self._closed = False

    @classmethod
    def connect(cls, settings: VsphereSettings) -> VsphereConnection:
        ep = parse_server(settings.server)
        where = f"{ep.host}:{ep.port}"
        ctx = tls_context(settings)
        try:
            si = SmartConnect(  # type: ignore[no-untyped-call]
                host=ep.host,
                port=ep.port,
                path=ep.path,
                user=settings.username,
                pwd=settings.password,
                sslContext=ctx,
            )
        except vim.fault.InvalidLogin as err:
            raise ConnectionFailed(
                f"vSphere {where} refused the login of user {settings.username!r}: "
                "wrong user name or password"
            ) from err
        except ssl.SSLCertVerificationError as err:
            raise ConnectionFailed(
                f"cannot verify the TLS certificate of vSphere {where} ({err.verify_message}); "
                f"trust its CA with --ca-file ({' or '.join(CA_FILE_ENV)}), "
                "or pass --insecure (GOVC_INSECURE=1)"
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
        return cls(
            si,
            ep,
            settings.insecure,
            ssl_context=ctx,
            foreign_snapshot_max_age=timedelta(hours=settings.foreign_snapshot_max_age_hours),
        )

    def translate(self, what: str) -> contextlib.AbstractContextManager[None]:
        return translate(what, f"{self.endpoint.host}:{self.endpoint.port}")

    def server_time(self) -> datetime:
        """The server's clock (snapshot ages are measured on it, not on ours)."""
        with self.translate("reading the server's time"):
            now = self.si.CurrentTime()
        if not isinstance(now, datetime):
            raise ProviderError(f"vSphere {self.endpoint.host} gave no current time")
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    def vm_key(self, vm: Any) -> str:
        """Names one VM of one server within this process."""
        return f"{self.endpoint.netloc}{self.endpoint.path}#{vm._moId}"

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
