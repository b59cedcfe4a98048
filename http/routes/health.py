"""Probes: /health (liveness), /ready (readiness), /diag (what an operator looks at first).

All three read only the published Snapshot (`control.snapshot()` never blocks and never
raises), so they answer even when the store or every actor is stuck — that is the point
of a probe, and /health staying up is what the HTTP tests use to prove the loop is free.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from aiohttp import web

from wasync.http.common import CONTROL, json_response
from wasync.runtime.board import Snapshot, StoreHealth
from wasync.runtime.store.schema import iso


routes = web.RouteTableDef()


def store_json(store: StoreHealth) -> dict:
    return {"name": store.name, "connected": store.connected, "lastError": store.last_error,
            "checkedAtMs": store.checked_at_ms, "downSinceMs": store.down_since_ms}


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    # Liveness: the process answers, so 200 even with the store down (restarting us
    # would not bring the store back); the body says how the store is.
    snap: Snapshot = request.app[CONTROL].snapshot()
    return json_response({"ok": True, "instanceId": snap.instance_id, "store": store_json(snap.store)})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    snap: Snapshot = request.app[CONTROL].snapshot()
    # mode: "active" while this instance can take and keep account leases, "passive" when it
    # cannot (store unreachable, draining); leases: how many it holds.
    body = {"ready": snap.ready, "mode": snap.mode, "instanceId": snap.instance_id,
            "leases": snap.leases.held if snap.leases is not None else 0}
    return json_response(body, status=200 if snap.ready else 503)


@routes.get("/diag")
async def diag(request: web.Request) -> web.Response:
    snap: Snapshot = request.app[CONTROL].snapshot()
    now = datetime.now(timezone.utc)
    now_ms = int(now.timestamp() * 1000)
    by_status = Counter(getattr(a.status, "value", a.status) for a in snap.accounts)
    return json_response({
        "ready": snap.ready,
        "mode": snap.mode,
        "instanceId": snap.instance_id,
        # Name kept from the old backend's /diag (the inbox app reads it): true when the
        # configured store answers, whichever it is; `storeKind` says which.
        "firestoreConnected": snap.store.connected,
        "storeKind": snap.store.name,
        "store": store_json(snap.store),
        "spool": {"depth": snap.spool_depth, "oldestAgeMs": snap.spool_oldest_age_ms},
        "accounts": {"total": len(snap.accounts), "byStatus": dict(sorted(by_status.items()))},
        "latestRealtime": [dict(entry) for entry in snap.latest_realtime],
        "snapshotAgeMs": max(0, now_ms - snap.taken_at_ms) if snap.taken_at_ms else None,
        "timestamp": iso(now),
    })
