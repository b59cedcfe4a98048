"""Test-only: fault injection into an account's actor (WASYNC_DEBUG_FAULTS=true).

End-to-end tests use it to make a real daemon's AccountActor raise in a handler or block
in one forever, and then watch the supervisor restart or replace it. Without the setting
the route does not exist (404 like any unknown path), so production daemons cannot be
poked this way even with the admin token.
"""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, read_json_object, validate_account_id

KINDS = ("raise", "block", "outbox-crash-claimed", "outbox-crash-sent")

routes = web.RouteTableDef()  # added to the app only with WASYNC_DEBUG_FAULTS


@routes.post("/api/admin/debug/fault/{accountId}")
async def inject_fault(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    body = await read_json_object(request)
    kind = body.get("kind")
    if set(body) - {"kind"} or kind not in KINDS:
        raise ApiError(400, "invalid_body", "expected {\"kind\": " + " | ".join(f'"{k}"' for k in KINDS) + "}")
    await call_daemon(request, request.app[CONTROL].inject_fault, account_id, kind)
    return json_response({"success": True, "accountId": account_id, "kind": kind})
