"""``/``: the operator's dashboard, a static page shipped in the package (``static/dashboard``).

The page holds no data, so it is public (a browser cannot send a bearer token when it navigates):
its script asks for a token once and reads the v1 JSON routes with it, where the guard checks it
like any other client's. No build step and no outside URL: an air-gapped lab gets a working page.

Every answer carries headers that keep the page to its own files: a Content-Security-Policy that
allows only this service's script, style, images and API (no inline script, no framing, no form
posted elsewhere), ``nosniff`` so a file is only ever run as the type it is served as, and no
caching of the page so an upgraded service is never shown with an old script.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

DASHBOARD = Path(__file__).resolve().parent.parent / "static" / "dashboard"
# Where the page's script, style and icon are served (the page names them under this prefix).
ASSETS = "/dashboard"
# The files the page may load, by name, and their types: nothing else in the folder is served.
ASSET_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
# Sent with the page and its files alike.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@cache
def _read(name: str) -> bytes:
    """A file of the dashboard, read once (they ship with the package and never change)."""
    return (DASHBOARD / name).read_bytes()


async def page(request: Request) -> Response:
    """The dashboard's HTML: no data in it, and never cached (the data comes from ``/v1``)."""
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
    )


async def asset(request: Request) -> Response:
    """One of the page's own files; any other name is 404 (no path is ever joined from input)."""
    name = request.path_params["asset"]
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        return Response(b'{"detail":"no such dashboard file"}', 404, media_type="application/json")
    # no-cache: the browser may keep a copy but asks each time, so an upgrade shows at once.
    return Response(
        _read(name),
        media_type=media_type,
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


def serve_dashboard(app: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /dashboard/{asset}`` (its script, style and icon).

    Plain routes on the app itself, not API operations: pages and files are not part of the
    OpenAPI schema, yet they are listed among the app's routes, where the role matrix test finds
    every route the app serves (as it finds ``/docs``).
    """
    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_route(f"{ASSETS}/{{asset}}", asset, methods=["GET"], include_in_schema=False)
