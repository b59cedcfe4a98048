"""GET /openapi.json: the OpenAPI 3.1 description of this API (http/openapi.py), without a
token (it holds no data; http/app.py lists it among the public paths)."""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import json_response
from wasync.http.openapi import DOCUMENT

routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)
