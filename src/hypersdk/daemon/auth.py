"""Bearer-token check for every route but ``/health`` and the dashboard's static files
under ``/ui/`` (routes_ui.py; a path is matched whole, so ``/ui/../x`` reaches no API
route) (pure ASGI: it also guards
/openapi.json and streaming responses). The daemon always has a token (configured, or
made in ``<state dir>/api-token``); the comparison is constant-time."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from hypersdk.daemon.guards import send_error

OPEN_PATHS = frozenset({"/health", "/ui"})
# The dashboard's static files: they hold no data; every call the page makes needs the token.
OPEN_PREFIX = "/ui/"


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("TokenAuth needs a token")
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        message = "missing API token" if not given else "wrong API token"
        await send_error(send, 401, "unauthorized", message, [(b"www-authenticate", b"Bearer")])
