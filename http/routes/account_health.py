"""Admin: GET /api/whatsapp/accounts/{accountId}/health — SPEC §4.

Answered from the published snapshot (never waits for an actor or the store) for accounts
running here; an account that is only in the store is looked up through the daemon and
reported as not running on this instance.
"""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, validate_account_id
from wasync.http import views

routes = web.RouteTableDef()


@routes.get("/api/whatsapp/accounts/{accountId}/health")
async def account_health(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    control = request.app[CONTROL]
    snapshot = control.snapshot()
    view = views.one(account_id, {}, snapshot)
    if view.live is None:
        doc = next((d for d in await call_daemon(request, control.list_accounts) if d.get("accountId") == account_id),
                   None)
        if doc is None:
            raise ApiError(404, "unknown_account", f"no account {account_id}")
        view = views.one(account_id, doc, snapshot)
    return json_response(view.health(snapshot.taken_at_ms, snapshot.instance_id))
