"""The admin page: GET /admin (the page shell) and GET /admin/assets/{name} (its CSS and
JS), served from the package's http/static folder.

These responses hold no data and need no token (http/app.py lets /admin... through): the
page asks the operator for the admin token, keeps it in the browser session, and reads
everything from the JSON admin API with `Authorization: Bearer`. The headers below let
the page run its own files and nothing else (no inline script or style, no framing).
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"admin.css": "text/css; charset=utf-8", "admin.js": "text/javascript; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "; ".join((
        "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:",
        "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'")),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time: an upgraded daemon must not run yesterday's script.
    "Cache-Control": "no-cache",
}

routes = web.RouteTableDef()


def _serve(name: str, content_type: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers={**PAGE_HEADERS, "Content-Type": content_type})


@routes.get("/admin")
async def page(request: web.Request) -> web.StreamResponse:
    return _serve("admin.html", "text/html; charset=utf-8")


@routes.get("/admin/")
async def page_slash(request: web.Request) -> web.StreamResponse:
    # Returned, not raised: a raised redirect would skip the middlewares' headers.
    return web.Response(status=302, headers={"Location": "/admin"})


@routes.get("/admin/assets/{name}")
async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return _serve(name, ASSETS[name])
