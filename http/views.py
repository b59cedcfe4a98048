"""The one place where what is live (the published snapshot) is laid over what is stored
(the account documents), for every endpoint that shows accounts: the accounts list, the
dashboard and the health endpoint. Live state wins for what the daemon decides and
observes now (status, connected, warnings, repair); the document supplies the rest, and
an account that does not run here is said to be so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from wasync.runtime.account import AccountState

NOT_HERE = "not running on this instance"


@dataclass(frozen=True)
class AccountView:
    account_id: str
    doc: dict  # the stored document ({} when the store could not be read)
    live: Optional[AccountState]  # None: no actor of this instance supervises it

    @property
    def status(self) -> str:
        return self.live.status.value if self.live else (self.doc.get("status") or "disconnected")

    def document(self) -> dict:
        """The stored document with the live status over it (GET /api/whatsapp/accounts)."""
        if self.live is None:
            return dict(self.doc)
        return {**self.doc, "status": self.status, "connected": self.live.connected}

    def summary(self, instance_id: str) -> dict:
        """One dashboard row (SPEC §4)."""
        doc, live = self.doc, self.live
        row = {
            "accountId": self.account_id, "phone": doc.get("phone"), "status": self.status, "connected": False,
            "degraded": False, "warning": NOT_HERE, "needsRepair": bool(doc.get("needsRepair")),
            "repairReason": doc.get("repairReason"), "restarts": 0, "lastRealMessageMs": None,
            "lastHistorySyncAt": doc.get("lastHistorySyncAt"), "lastRealtimeMessageAt": doc.get("lastRealtimeMessageAt"),
            "lastBackfillAt": doc.get("lastBackfillAt"), "leaseHolder": None,
        }
        if live is not None:
            row.update(phone=live.phone or row["phone"], connected=live.connected, degraded=live.is_degraded,
                       warning=live.warning, needsRepair=live.needs_repair, repairReason=live.repair_reason,
                       restarts=live.restarts, lastRealMessageMs=live.last_real_message_ms,
                       leaseHolder=live.lease_holder or instance_id)
        return row

    def health(self, now_ms: int, instance_id: str) -> dict:
        """GET /api/whatsapp/accounts/{id}/health (SPEC §4 and what supervision adds)."""
        live = self.live
        if live is None:
            return {"success": True, "accountId": self.account_id, "status": self.status, "connected": False,
                    "lastRealMessageMs": None, "timeSinceLastRealMs": None, "isDegraded": False, "warning": NOT_HERE,
                    "needsRepair": bool(self.doc.get("needsRepair")), "repairReason": self.doc.get("repairReason"),
                    "restarts": 0, "lastProtocolMessageMs": None, "connectedSinceMs": None, "keepaliveTimeouts": 0,
                    "undecryptableRecent": 0, "instanceId": instance_id}
        last_real = live.last_real_message_ms
        return {
            "success": True, "accountId": self.account_id, "status": self.status, "connected": live.connected,
            "lastRealMessageMs": last_real,
            "timeSinceLastRealMs": None if last_real is None else max(0, now_ms - last_real),
            "isDegraded": live.is_degraded, "warning": live.warning, "needsRepair": live.needs_repair,
            "repairReason": live.repair_reason, "restarts": live.restarts,
            "lastProtocolMessageMs": live.last_protocol_message_ms, "connectedSinceMs": live.connected_since_ms,
            "keepaliveTimeouts": live.keepalive_timeouts, "undecryptableRecent": live.undecryptable_recent,
            "instanceId": instance_id,
        }


def merge(docs: Iterable[dict], live: Iterable[AccountState]) -> list[AccountView]:
    """Every account that is stored or live, by id."""
    by_id = {d["accountId"]: d for d in docs}
    states = {s.account_id: s for s in live}
    return [AccountView(a, by_id.get(a, {}), states.get(a)) for a in sorted(by_id.keys() | states.keys())]
