"""Admin: GET /api/status/instances — the instances sharing the accounts, as this
instance's lease coordinator last saw them (from the published snapshot, never the store):
live or not, how long since each heartbeat moved (on this instance's clock), how many
account leases each holds."""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, json_response

routes = web.RouteTableDef()


@routes.get("/api/status/instances")
async def instances(request: web.Request) -> web.Response:
    snap = request.app[CONTROL].snapshot()
    seen = snap.leases.instances if snap.leases is not None else ()
    return json_response({
        "success": True, "instanceId": snap.instance_id, "mode": snap.mode,
        "leasesHeld": snap.leases.held if snap.leases is not None else 0,
        "instances": [{"instanceId": i.instance_id, "self": i.instance_id == snap.instance_id, "live": i.live,
                       "heartbeatAgeMs": i.unchanged_for_ms, "accountsHeld": i.held, "startedAt": i.started_at,
                       "version": i.version} for i in seen],
    })
