"""Admin: backfills — start one now (SPEC §4, both paths) and read how it goes and how
complete the account's history is."""
from __future__ import annotations

from aiohttp import web

from wasync.http import views
from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, read_json_object, validate_account_id
from wasync.actors.scheduler_protocol import BackfillRunning

STATUS_THREADS = 200  # threads listed by default (most recent first)
STATUS_THREADS_MAX = 1000

routes = web.RouteTableDef()


async def _start(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    body = await read_json_object(request)
    if body:
        raise ApiError(400, "unknown_field", "this call takes no body (the run follows the WHATSAPP_BACKFILL_* "
                                             "settings)")
    try:
        run_id = await call_daemon(request, request.app[CONTROL].start_backfill, account_id)
    except BackfillRunning as exc:
        raise ApiError(409, "backfill_running", str(exc)) from None
    return json_response({"success": True, "message": "Backfill started (runs asynchronously)",
                          "accountId": account_id, "runId": run_id}, status=202)


routes.post("/api/whatsapp/backfill/{accountId}")(_start)
routes.post("/api/admin/backfill/{accountId}")(_start)


@routes.get("/api/admin/backfill/{accountId}/status")
async def status(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    raw = request.query.get("threads", str(STATUS_THREADS))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= STATUS_THREADS_MAX:
        raise ApiError(400, "invalid_threads", f"threads must be an integer from 1 to {STATUS_THREADS_MAX}")
    control = request.app[CONTROL]
    doc, threads = await call_daemon(request, control.backfill_status, account_id, int(raw))
    snapshot = control.snapshot()
    return json_response(views.backfill_status(views.one(account_id, doc, snapshot), threads, snapshot.instance_id))
