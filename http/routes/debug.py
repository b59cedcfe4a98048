"""Test-only: fault injection into an account's actor or the supervisor (WASYNC_DEBUG_FAULTS=true).

End-to-end tests use it to make a real daemon's AccountActor raise in a handler or block
in one forever, and then watch the supervisor restart or replace it; with
`"target": "supervisor"` the supervisor itself blocks for good (the path's account id
only addresses the route), and the tests watch the systemd watchdog stop pinging.
Without the setting the route does not exist (404 like any unknown path), so production
daemons cannot be poked this way even with the admin token.
"""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, read_json_object, validate_account_id

KINDS = ("raise", "block", "outbox-crash-claimed", "outbox-crash-sent")
SUPERVISOR_KINDS = ("block",)

routes = web.RouteTableDef()  # added to the app only with WASYNC_DEBUG_FAULTS


@routes.post("/api/admin/debug/fault/{accountId}")
async def inject_fault(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    body = await read_json_object(request)
    kind, target = body.get("kind"), body.get("target", "account")
    if set(body) - {"kind", "target"} or target not in ("account", "supervisor") or \
            kind not in (KINDS if target == "account" else SUPERVISOR_KINDS):
        raise ApiError(400, "invalid_body", "expected {\"kind\": " + " | ".join(f'"{k}"' for k in KINDS) +
                       "} or {\"kind\": \"block\", \"target\": \"supervisor\"}")
    control = request.app[CONTROL]
    if target == "supervisor":
        await call_daemon(request, control.block_supervisor)
        return json_response({"success": True, "target": target, "kind": kind})
    await call_daemon(request, control.inject_fault, account_id, kind)
    return json_response({"success": True, "accountId": account_id, "kind": kind})
