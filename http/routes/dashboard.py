"""Admin: GET /api/status/dashboard — every account in one table (SPEC §4).

Live fields come from the published snapshot; the rest (history sync, backfill, realtime
times) from the account documents. When the store cannot be read the dashboard still
answers from the snapshot alone, saying so in `storeError`: an outage is exactly when
operators look at it.
"""
from __future__ import annotations

import logging
from typing import Optional

from aiohttp import web

from wasync.http.app import CONTROL, call_daemon, json_response, request_id_var
from wasync.runtime.bridge import BridgeTimeout
from wasync.runtime.model import AccountState, AccountStatus
from wasync.runtime.store.base import StoreError

log = logging.getLogger("wasync.http")


def _entry(account_id: str, doc: Optional[dict], state: Optional[AccountState], instance_id: str) -> dict:
    doc = doc or {}
    entry = {
        "accountId": account_id, "phone": doc.get("phone"), "status": doc.get("status") or "disconnected",
        "connected": False, "degraded": False, "warning": None if state else "not running on this instance",
        "needsRepair": bool(doc.get("needsRepair")), "repairReason": doc.get("repairReason"), "restarts": 0,
        "lastRealMessageMs": None, "lastHistorySyncAt": doc.get("lastHistorySyncAt"),
        "lastRealtimeMessageAt": doc.get("lastRealtimeMessageAt"), "lastBackfillAt": doc.get("lastBackfillAt"),
        "leaseHolder": None,
    }
    if state is not None:
        entry.update(
            phone=state.phone or entry["phone"], status=state.status.value, connected=state.connected,
            degraded=state.is_degraded, warning=state.warning, needsRepair=state.needs_repair,
            repairReason=state.repair_reason, restarts=state.restarts, lastRealMessageMs=state.last_real_message_ms,
            leaseHolder=state.lease_holder or instance_id)
    return entry


async def dashboard(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    snapshot = control.snapshot()
    live = {a.account_id: a for a in snapshot.accounts}
    store_error = None
    try:
        docs = {d["accountId"]: d for d in await call_daemon(request, control.list_accounts)}
    except (StoreError, BridgeTimeout) as exc:  # the expected outages: answer from the snapshot
        log.warning("[http] rid=%s dashboard without account documents: %s", request_id_var.get(), exc)
        docs, store_error = {}, str(exc) or type(exc).__name__
    except Exception as exc:  # e.g. a raw driver error an adapter did not wrap: still answer
        log.exception("[http] rid=%s dashboard without account documents", request_id_var.get())
        docs, store_error = {}, f"{type(exc).__name__}: {exc}"
    accounts = [_entry(a, docs.get(a), live.get(a), snapshot.instance_id) for a in sorted(docs.keys() | live.keys())]
    counts = {s.value: 0 for s in AccountStatus}
    for entry in accounts:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    body = {"success": True, "instanceId": snapshot.instance_id, "generatedAtMs": snapshot.taken_at_ms,
            "counts": counts, "accounts": accounts}
    if store_error is not None:
        body["storeError"] = store_error
    return json_response(body)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/status/dashboard", dashboard)
