"""The one place where what is live (the published snapshot) is laid over what is stored
(the account documents), for every endpoint that shows accounts: the accounts list, the
dashboard and the health endpoint. Live state wins for what the daemon decides and
observes now (status, connected, warnings, repair); the document supplies the rest, and
an account that does not run here is said to be so. The lease holder and epoch come
from the lease coordinator's last read, for accounts running anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from wasync.runtime.account import AccountState
from wasync.runtime.backfill import MessageRef, ThreadHistory
from wasync.runtime.board import Snapshot
from wasync.runtime.model import thread_id

NOT_HERE = "not running on this instance"


@dataclass(frozen=True)
class AccountView:
    account_id: str
    doc: dict  # the stored document ({} when the store could not be read)
    live: Optional[AccountState]  # None: no actor of this instance supervises it
    lease: Optional[tuple[str, int]] = None  # (holder instance, epoch) as the lease coordinator last saw it

    def _holder(self, instance_id: str) -> tuple[Optional[str], Optional[int]]:
        if self.live is not None and self.live.lease_holder:
            return self.live.lease_holder, self.live.lease_epoch
        if self.lease is not None:
            return self.lease
        return (instance_id, None) if self.live is not None else (None, None)

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
            "lastBackfillAt": doc.get("lastBackfillAt"), "lastBackfillStatus": doc.get("lastBackfillStatus"),
            "backfillRunning": None,
        }
        row["leaseHolder"], row["leaseEpoch"] = self._holder(instance_id)
        if live is not None:
            row.update(phone=live.phone or row["phone"], connected=live.connected, degraded=live.is_degraded,
                       warning=live.warning, needsRepair=live.needs_repair, repairReason=live.repair_reason,
                       restarts=live.restarts, lastRealMessageMs=live.last_real_message_ms,
                       backfillRunning=None if live.walk is None else {
                           "job": live.walk.job.value, "threadsDone": live.walk.threads_done,
                           "threadsTotal": live.walk.threads_total, "messages": live.walk.messages})
        return row

    def health(self, now_ms: int, instance_id: str) -> dict:
        """GET /api/whatsapp/accounts/{id}/health (SPEC §4 and what supervision adds)."""
        live = self.live
        holder, epoch = self._holder(instance_id)
        if live is None:
            return {"success": True, "accountId": self.account_id, "status": self.status, "connected": False,
                    "lastRealMessageMs": None, "timeSinceLastRealMs": None, "isDegraded": False, "warning": NOT_HERE,
                    "needsRepair": bool(self.doc.get("needsRepair")), "repairReason": self.doc.get("repairReason"),
                    "restarts": 0, "lastProtocolMessageMs": None, "connectedSinceMs": None, "keepaliveTimeouts": 0,
                    "undecryptableRecent": 0, "instanceId": instance_id, "leaseHolder": holder, "leaseEpoch": epoch}
        last_real = live.last_real_message_ms
        return {
            "success": True, "accountId": self.account_id, "status": self.status, "connected": live.connected,
            "lastRealMessageMs": last_real,
            "timeSinceLastRealMs": None if last_real is None else max(0, now_ms - last_real),
            "isDegraded": live.is_degraded, "warning": live.warning, "needsRepair": live.needs_repair,
            "repairReason": live.repair_reason, "restarts": live.restarts,
            "lastProtocolMessageMs": live.last_protocol_message_ms, "connectedSinceMs": live.connected_since_ms,
            "keepaliveTimeouts": live.keepalive_timeouts, "undecryptableRecent": live.undecryptable_recent,
            "instanceId": instance_id, "leaseHolder": holder, "leaseEpoch": epoch,
        }


def outbox_counts(counts: Optional[dict]) -> dict:
    """An account's outbox items waiting for WhatsApp (queued, sending) or for an operator
    (unknown: may have been sent)."""
    return {status: (counts or {}).get(status, 0) for status in ("queued", "sending", "unknown")}


def merge(docs: Iterable[dict], snapshot: Snapshot) -> list[AccountView]:
    """Every account that is stored or live, by id."""
    by_id = {d["accountId"]: d for d in docs}
    states = {s.account_id: s for s in snapshot.accounts}
    holders = snapshot.leases.holders if snapshot.leases is not None else {}
    return [AccountView(a, by_id.get(a, {}), states.get(a), holders.get(a)) for a in sorted(by_id.keys() | states.keys())]


def one(account_id: str, doc: dict, snapshot: Snapshot) -> AccountView:
    live = next((a for a in snapshot.accounts if a.account_id == account_id), None)
    holders = snapshot.leases.holders if snapshot.leases is not None else {}
    return AccountView(account_id, doc, live, holders.get(account_id))


def backfill_status(view: AccountView, threads: list[ThreadHistory], instance_id: str) -> dict:
    """GET /api/admin/backfill/{id}/status: what runs now, how the last runs went, and how
    complete the account's history is, thread by thread (the most recent `len(threads)`).

    A thread is `complete` when WhatsApp said nothing older exists, `unreachable` when it
    is not and this account's transport cannot ask for older history (neonize 0.5.2), and
    `incomplete` otherwise (more may come from a backfill)."""
    doc, live = view.doc, view.live
    on_demand = None if live is None else live.on_demand
    rows, counts, stored = [], {"complete": 0, "incomplete": 0, "unreachable": 0}, 0
    for t in threads:
        state = "complete" if t.complete else ("unreachable" if on_demand is False else "incomplete")
        counts[state] += 1
        stored += t.stored
        rows.append({
            "threadId": thread_id(t.account_id, t.chat_jid), "chatJid": t.chat_jid, "state": state,
            "stored": t.stored, "complete": t.complete, "lastMessageAtMs": t.last_message_at_ms,
            "oldest": _ref(t.oldest), "newest": _ref(t.newest), "lastBackfillAtMs": t.last_backfill_at_ms,
            "lastBackfillResult": t.last_backfill_result,
        })
    walk = live.walk if live is not None else None
    holder, epoch = view._holder(instance_id)
    return {
        "success": True, "accountId": view.account_id, "leaseHolder": holder, "leaseEpoch": epoch,
        "onDemand": {True: "available", False: "unavailable"}.get(on_demand, "unknown"),
        "running": None if walk is None else {
            "runId": walk.run_id, "job": walk.job.value, "trigger": walk.trigger.value,
            "startedAtMs": walk.started_ms, "threadsTotal": walk.threads_total, "threadsDone": walk.threads_done,
            "messages": walk.messages},
        "lock": {"holder": doc.get("autoBackfillLeaseHolder"), "until": doc.get("autoBackfillLeaseUntil"),
                 "acquiredAt": doc.get("autoBackfillLeaseAcquiredAt")},
        "last": {"status": doc.get("lastBackfillStatus"), "at": doc.get("lastBackfillAt"),
                 "error": doc.get("lastBackfillError"), "stats": doc.get("lastBackfillStats"),
                 "result": doc.get("lastBackfillResult")},
        "auto": {k: doc.get(k) for k in ("lastAutoBackfillAt", "lastAutoBackfillSuccessAt",
                                         "lastAutoBackfillAttemptAt", "lastAutoBackfillStatus")},
        "recentSync": {"lastRecentSyncAt": doc.get("lastRecentSyncAt"),
                       "lastRecentSyncResult": doc.get("lastRecentSyncResult")},
        "lastAutoRepairAt": doc.get("lastAutoRepairAt"),
        "completeness": {"threads": len(threads), **counts, "messagesStored": stored},
        "threads": rows,
    }


def _ref(ref: Optional[MessageRef]) -> Optional[dict]:
    return None if ref is None else {"id": ref.id, "tsMs": ref.ts_ms, "fromMe": ref.from_me}
