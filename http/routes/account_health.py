"""Admin: GET /api/whatsapp/accounts/{accountId}/health — SPEC §4.

Answered from the published snapshot (never waits for an actor or the store) for accounts
running here; an account that is only in the store is looked up through the daemon and
reported as not running on this instance.
"""
from __future__ import annotations

from typing import Optional

from aiohttp import web

from wasync.http.app import CONTROL, ApiError, call_daemon, json_response
from wasync.http.routes.accounts import validate_account_id
from wasync.runtime.model import AccountState


def health_body(state: AccountState, now_ms: int, instance_id: str) -> dict:
    last_real = state.last_real_message_ms
    return {
        "success": True, "accountId": state.account_id, "status": state.status.value,
        "connected": state.connected, "lastRealMessageMs": last_real,
        "timeSinceLastRealMs": None if last_real is None else max(0, now_ms - last_real),
        "isDegraded": state.is_degraded, "warning": state.warning,
        "needsRepair": state.needs_repair, "repairReason": state.repair_reason, "restarts": state.restarts,
        "lastProtocolMessageMs": state.last_protocol_message_ms, "connectedSinceMs": state.connected_since_ms,
        "keepaliveTimeouts": state.keepalive_timeouts, "undecryptableRecent": state.undecryptable_recent,
        "instanceId": instance_id,
    }


def not_running_body(doc: dict, instance_id: str) -> dict:
    return {
        "success": True, "accountId": doc["accountId"], "status": doc.get("status") or "disconnected",
        "connected": False, "lastRealMessageMs": None, "timeSinceLastRealMs": None, "isDegraded": False,
        "warning": "not running on this instance", "needsRepair": bool(doc.get("needsRepair")),
        "repairReason": doc.get("repairReason"), "restarts": 0, "lastProtocolMessageMs": None,
        "connectedSinceMs": None, "keepaliveTimeouts": 0, "undecryptableRecent": 0, "instanceId": instance_id,
    }


def _find(docs: list[dict], account_id: str) -> Optional[dict]:
    return next((d for d in docs if d.get("accountId") == account_id), None)


async def account_health(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    control = request.app[CONTROL]
    snapshot = control.snapshot()
    state = next((a for a in snapshot.accounts if a.account_id == account_id), None)
    if state is not None:
        return json_response(health_body(state, snapshot.taken_at_ms, snapshot.instance_id))
    doc = _find(await call_daemon(request, control.list_accounts), account_id)
    if doc is None:
        raise ApiError(404, "unknown_account", f"no account {account_id}")
    return json_response(not_running_body(doc, snapshot.instance_id))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/whatsapp/accounts/{accountId}/health", account_health)
