"""GET /metrics: Prometheus exposition. The state gauges are refreshed from the
published snapshot first, so a scrape never asks an actor anything."""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, METRICS

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    registry.update_from_snapshot(request.app[CONTROL].snapshot())
    # Content type set as a header: web.Response(content_type=...) refuses parameters
    # such as `version=`, which Prometheus uses to pick the parser.
    return web.Response(body=registry.render(), headers={"Content-Type": registry.CONTENT_TYPE})
