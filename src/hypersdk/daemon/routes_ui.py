"""The dashboard's static files at ``/ui/`` (docs/design.md, "Dashboard").

The files need no token: they hold no data, and the page itself sends the token (kept
in session storage) as the bearer header on every API call. Only the files of the
package's ``ui`` folder are served, by name from a fixed set, with a Content-Security-
Policy that lets the page load and call nothing but this daemon."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from hypersdk.errors import NotFoundError

UI_DIR = Path(__file__).with_name("ui")
PREFIX = "/ui/"
# The page's own files and their types; anything else under /ui/ is a 404.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HEADERS = {
    # Self only: no inline script, no other origin, no framing by another page.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def sign_in_url(base_url: str, token: str) -> str:
    """The link the daemon prints at start: the token rides in the fragment, which a
    browser never sends to a server (so no log ever holds it)."""
    return f"{base_url.rstrip('/')}{PREFIX}#token={token}"


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse(PREFIX, status_code=308)


@router.get("/ui/{name}")
def ui_file(name: str) -> Response:
    media = FILES.get(name)
    if media is None:
        raise NotFoundError(f"no dashboard file {name!r}")
    path = UI_DIR / name
    if not path.is_file():
        raise NotFoundError(
            f"the dashboard is not built ({name} missing): run `make setup` "
            "(it bundles src/hypersdk/daemon/ui/app.ts with esbuild)"
        )
    return Response(path.read_bytes(), media_type=media, headers=HEADERS)


@router.get("/ui/")
def ui_index() -> Response:
    return ui_file("index.html")
