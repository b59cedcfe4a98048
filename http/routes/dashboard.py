"""Admin: GET /api/status/dashboard — every account in one table (SPEC §4).

Live fields come from the published snapshot; the rest (history sync, backfill, realtime
times) from the account documents. When the store cannot be read the dashboard still
answers from the snapshot alone, saying so in `storeError`: an outage is exactly when
operators look at it.
"""
from __future__ import annotations

import logging

from aiohttp import web

from wasync.http import views
from wasync.http.common import CONTROL, call_daemon, json_response, request_id_var
from wasync.runtime.bridge import BridgeTimeout
from wasync.runtime.model import AccountStatus
from wasync.runtime.store.base import StoreError

log = logging.getLogger("wasync.http")

routes = web.RouteTableDef()


@routes.get("/api/status/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    snapshot = control.snapshot()
    store_error = None
    waiting: dict = {}
    try:
        docs = await call_daemon(request, control.list_accounts)
        waiting = await call_daemon(request, control.outbox_counts)
    except (StoreError, BridgeTimeout) as exc:  # the expected outages: answer from the snapshot
        log.warning("[http] rid=%s dashboard without account documents: %s", request_id_var.get(), exc)
        docs, store_error = [], str(exc) or type(exc).__name__
    except Exception as exc:  # e.g. a raw driver error an adapter did not wrap: still answer
        log.exception("[http] rid=%s dashboard without account documents", request_id_var.get())
        docs, store_error = [], f"{type(exc).__name__}: {exc}"
    accounts = [{**v.summary(snapshot.instance_id), "outbox": views.outbox_counts(waiting.get(v.account_id))}
                for v in views.merge(docs, snapshot)]
    counts = {s.value: 0 for s in AccountStatus}
    for entry in accounts:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    body = {"success": True, "instanceId": snapshot.instance_id, "generatedAtMs": snapshot.taken_at_ms,
            "counts": counts, "accounts": accounts}
    if store_error is not None:
        body["storeError"] = store_error
    return json_response(body)
