"""Where the SDK finds its API token when the caller gives none.

1. the ``token`` argument (an empty string: send no token at all);
2. ``HYPERSDK_API_TOKEN``;
3. the daemon's token file on this host, ``$HYPERSDK_STATE_DIR/api-token`` or
   ``~/.hypersdk/api-token``, only for a loopback base URL: that file belongs to the
   daemon on this host and must not be sent to another one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_FILE = "api-token"


def is_loopback_url(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_file(env: Mapping[str, str]) -> Path:
    state = env.get("HYPERSDK_STATE_DIR")
    folder = Path(state).expanduser() if state else Path.home() / ".hypersdk"
    return folder / TOKEN_FILE


def find_token(
    token: str | None, base_url: str, env: Mapping[str, str] | None = None
) -> str | None:
    if token is not None:
        return token or None
    e = os.environ if env is None else env
    if e.get("HYPERSDK_API_TOKEN"):
        return e["HYPERSDK_API_TOKEN"]
    if not is_loopback_url(base_url):
        return None
    try:
        text = token_file(e).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError, RuntimeError):  # RuntimeError: no home folder
        return None
    return text or None
