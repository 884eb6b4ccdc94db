"""Read a datastore file with HTTPS Range requests on vSphere's ``/folder`` service.

``GET https://host/folder/<dir>/<name>-flat.vmdk?dcPath=<dc>&dsName=<ds>`` with the SOAP
session cookie, ``Range: bytes=a-b`` and ``Accept-Encoding: identity``. Every reply must
be ``206`` with a ``Content-Range`` of exactly ``bytes a-b/N`` where ``N`` (the file's
size) equals the disk's capacity, no content coding, and a body of exactly ``b-a+1``
bytes. Refused, never written at an offset: a ``200`` (the server ignored the Range), a
range other than the one asked, a total ``N`` other than the capacity (the file is not
the disk we were told of: another file, a flat file of another size, a proxy's page),
a total ``*`` (unknown size: a flat disk file always has one, so nothing can be proven
about it), and a compressed body (the range would count coded bytes). Transient failures
(connection errors, timeouts, 5xx) are retried with exponential backoff; a certificate
that does not verify is not transient and fails at once.

One ``httpx.Client`` (thread-safe, HTTP/1.1, a pool of keep-alive connections) serves
every disk and thread of a session, with the connection's TLS context (the one the
login used).
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from urllib.parse import quote, urlencode

import httpx

from hypersdk.errors import ConnectionFailed, ProviderError

RETRIES = 4  # attempts in all
BACKOFF = 0.2  # seconds before the 2nd attempt; doubles
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def folder_url(netloc: str, dc_path: str, datastore: str, path: str) -> str:
    query = urlencode({"dcPath": dc_path, "dsName": datastore})
    return f"https://{netloc}/folder/{quote(path)}?{query}"


def make_client(
    cookie: tuple[str, str], *, ssl_context: ssl.SSLContext, pool: int, timeout: float = 120.0
) -> httpx.Client:
    name, value = cookie
    return httpx.Client(
        verify=ssl_context,
        http1=True,
        http2=False,
        # identity: a Range counts stored bytes; a coded body could not be checked.
        headers={"Cookie": f"{name}={value}", "Accept-Encoding": "identity"},
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        timeout=httpx.Timeout(timeout, connect=15.0),
        follow_redirects=False,
    )


class _Transient(Exception):
    pass


def _cert_error(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind an httpx error, if that is what it is."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class HttpRangeReader:
    """``DiskReader`` of one flat disk file; safe to call from several threads."""

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        capacity: int,
        disk_key: str,
        *,
        retries: int = RETRIES,
        backoff: float = BACKOFF,
    ) -> None:
        self._client = client
        self.url = url
        self._capacity = capacity
        self._key = disk_key
        self._retries = max(1, retries)
        self._backoff = backoff
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (retries included)
        self.bytes = 0  # bytes received in accepted replies

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ProviderError(f"disk {self._key}: bad read {offset}+{length}")
        end = min(offset + length, self._capacity)
        if end <= offset:
            return bytes(length)
        data = self._get(offset, end - offset)
        if len(data) < length:  # past the end of the disk reads as zeros
            data += bytes(length - len(data))
        return data

    def _get(self, offset: int, length: int) -> bytes:
        last_err = ""
        for attempt in range(self._retries):
            if attempt:
                time.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                return self._once(offset, length)
            except _Transient as err:
                last_err = str(err)
        raise ConnectionFailed(
            f"disk {self._key}: reading {length} bytes at offset {offset} failed "
            f"{self._retries} times: {last_err}"
        )

    def _once(self, offset: int, length: int) -> bytes:
        last = offset + length - 1
        with self._lock:
            self.requests += 1
        try:
            resp = self._client.get(self.url, headers={"Range": f"bytes={offset}-{last}"})
        except httpx.TransportError as err:  # connect/read errors, timeouts, resets
            cert = _cert_error(err)
            if cert is not None:
                raise ConnectionFailed(
                    f"disk {self._key}: cannot verify the TLS certificate of the datastore "
                    f"server ({cert.verify_message}); trust its CA with --ca-file or pass "
                    "--insecure"
                ) from err
            raise _Transient(f"{type(err).__name__}: {err}") from err
        except httpx.HTTPError as err:
            raise ProviderError(f"disk {self._key}: HTTP request failed: {err}") from err
        status = resp.status_code
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        if status == 200:
            raise ProviderError(
                f"disk {self._key}: the server ignored the Range request (HTTP 200, whole "
                "file): refusing to use it"
            )
        if status in (401, 403):
            raise ConnectionFailed(
                f"disk {self._key}: the datastore refused the read (HTTP {status}): "
                "the vSphere session expired or lacks Datastore.Browse"
            )
        if status == 404:
            raise ProviderError(f"disk {self._key}: datastore file not found (HTTP 404)")
        if status != 206:
            raise ProviderError(f"disk {self._key}: unexpected HTTP {status} for a Range read")
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
        if not m or int(m.group(1)) != offset or int(m.group(2)) != last:
            raise ProviderError(
                f"disk {self._key}: Content-Range {resp.headers.get('Content-Range')!r} "
                f"does not match the request bytes={offset}-{last}"
            )
        total = m.group(3)
        if total == "*":
            raise ProviderError(
                f"disk {self._key}: the server did not say the datastore file's size "
                "(Content-Range total '*'): cannot check that it is the disk, refusing it"
            )
        if int(total) != self._capacity:
            raise ProviderError(
                f"disk {self._key}: the datastore file is {int(total)} bytes long by its "
                f"Content-Range, the disk {self._capacity} bytes: refusing to read a file "
                "that is not the disk"
            )
        coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise ProviderError(
                f"disk {self._key}: the server sent a {coding}-coded body although "
                "Accept-Encoding was identity: refusing to use it"
            )
        data = resp.content
        if len(data) != length:
            raise _Transient(f"short body: {len(data)} of {length} bytes")
        with self._lock:
            self.bytes += length
        return data
