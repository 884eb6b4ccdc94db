"""Pure ASGI guards in front of every route (they also cover streaming responses).

LoopbackHost   when the daemon listens on loopback, a Host header that is not a
               loopback name is refused: 421 ``misdirected_request``. A web page
               that re-points its own DNS name at 127.0.0.1 (DNS rebinding) sends
               its own name as Host, so it never reaches a route.
BodyGuard      a request body over 64 KiB is refused (413 ``body_too_large``),
               counted while it streams in, not only by Content-Length; a non-empty
               body that is not declared JSON is refused (415
               ``unsupported_media_type``): a browser can send ``text/plain`` across
               origins without a preflight.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hypersdk.daemon.config import is_loopback

MAX_BODY = 64 * 1024


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def is_loopback_host(host: str) -> bool:
    """``localhost``, ``127.x.x.x`` or ``[::1]``, with or without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
    else:
        name, sep, port = host.partition(":")
        if sep and not port.isdigit():
            return False
    return is_loopback(name)


class LoopbackHost:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is None or not is_loopback_host(host.decode("latin-1")):
                await send_error(
                    send,
                    421,
                    "misdirected_request",
                    "this daemon listens on loopback and answers only requests for "
                    "localhost, 127.0.0.1 or [::1] (Host header)",
                )
                return
        await self.app(scope, receive, send)


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class BodyGuard:
    """Reads the whole body first (at most MAX_BODY bytes), then hands it to the app."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_json(_header(scope, b"content-type")):
            await send_error(
                send,
                415,
                "unsupported_media_type",
                "a request body must be JSON sent as Content-Type: application/json",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            413,
            "body_too_large",
            f"the request body is larger than {self.limit // 1024} KiB",
            [(b"connection", b"close")],
        )


class EventStreamLimit:
    """At most ``limit`` open ``GET /exports/{id}/events`` streams: each holds a
    connection and waits for changes of its job. Beyond: 429 ``too_many_streams``. The count
    drops when the route returns, however the stream ends (finished, disconnected)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.open = 0  # one event loop: no lock needed

    @staticmethod
    def _is_stream(scope: Scope) -> bool:
        parts = str(scope.get("path", "")).split("/")
        return (
            scope.get("method") == "GET"
            and len(parts) == 4
            and parts[1] == "exports"
            and parts[3] == "events"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_stream(scope):
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            await send_error(
                send,
                429,
                "too_many_streams",
                f"{self.limit} event streams are open already; poll GET /exports/{{id}} "
                "or close a stream",
                [(b"retry-after", b"5")],
            )
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
