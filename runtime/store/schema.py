"""The stored schema (SPEC §2) and the merge rules both stores apply. Pure: no I/O.

Both stores read what is stored, merge with `merge_message` / `merge_thread` here, and
write the result, so they cannot disagree on what "idempotent" or "never backwards"
means. Documents are plain dicts with the SPEC's camelCase field names; timestamp
fields hold timezone-aware `datetime`s (Firestore Timestamps), `tsClient` an ISO string.
"""
from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone
from typing import Any, Optional

from wasync.runtime.account import AccountPatch, AccountRecord, JobTimes, Repair
from wasync.runtime.backfill import JobRun
from wasync.runtime.model import (
    AccountStatus,
    Message,
    MessageEdit,
    MessageRevoke,
    MessageStatus,
    Receipt,
    ThreadUpdate,
    later_status,
    thread_id,
)
from wasync.runtime.outbox import OutboxItem, OutboxStatus

# Collections (Firestore names; SqliteStore uses the same names for its tables).
ACCOUNTS = "accounts"
THREADS = "threads"
MESSAGES = "messages"  # subcollection of a thread
LEASES = "leases"
INSTANCES = "instances"
OUTBOX = "outbox"
BACKFILL_LOCKS = "whatsapp_backfill_locks"
RECENT_SYNC_LOCKS = "whatsapp_recent_sync_locks"
# Receipts, edits and revokes that arrived before their message: one patch per message.
PENDING = "pending_message_updates"

JOB_LOCK_COLLECTION = {"backfill": BACKFILL_LOCKS, "recent_sync": RECENT_SYNC_LOCKS}
# Account fields that mirror a job lock, so the dashboard sees who runs what (SPEC §2).
JOB_LOCK_MIRROR = {
    "backfill": ("autoBackfillLeaseUntil", "autoBackfillLeaseHolder", "autoBackfillLeaseAcquiredAt"),
    "recent_sync": ("recentSyncLeaseUntil", "recentSyncLeaseHolder", "recentSyncLeaseAcquiredAt"),
}


def ms_to_dt(ms: Optional[int]) -> Optional[datetime]:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def dt_to_ms(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(round(value.timestamp() * 1000))
    if isinstance(value, str):
        return dt_to_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return int(value)


def iso(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, as the old backend wrote `tsClient`."""
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# 1970 to 2100, where `iso(ms_to_dt(ms))` is exact too (beyond 2^32 s its float division
# loses the last millisecond now and then): both give the same text, byte for byte.
_ISO_FAST_MS = range(0, 4_102_444_800_000)


def iso_ms(ms: int) -> str:
    """`iso(ms_to_dt(ms))`, 3x faster (once per stored message) from 1970 to 2100; other
    times (and the error for impossible ones) take that path."""
    if ms not in _ISO_FAST_MS:
        return iso(ms_to_dt(ms))
    seconds, milli = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{milli:03d}Z"


# Message fields whose first stored value is kept (later copies do not overwrite them).
_KEEP_FIRST = ("createdAt", "tsServer", "syncSource", "deliveredAt", "readAt", "playedAt", "revokedAt")
_STATUS_TIME = {MessageStatus.DELIVERED: "deliveredAt", MessageStatus.READ: "readAt",
                MessageStatus.PLAYED: "playedAt"}


def message_doc(m: Message) -> dict[str, Any]:
    """The document a message is stored as, without store-time fields (createdAt,
    syncedAt, tsServer), which `merge_message` adds. None fields are left out so that a
    merge never erases what is stored. (Hot under history sync: kept lean.)"""
    doc = {
        "id": m.id,
        "waMessageId": m.id,
        "accountId": m.account_id,
        "clientJid": m.client_jid,
        # `_value_`, not `.value`: the same string, without Enum's property lookup (hot).
        "direction": m.direction._value_,
        "messageType": m.message_type._value_,
        "isGroup": m.is_group,
        "tsClient": iso_ms(m.ts_client_ms),
        "tsClientMs": m.ts_client_ms,
        "syncSource": m.sync_source._value_,
    }
    for key, value in (("senderJid", m.sender_jid), ("senderAltJid", m.sender_alt_jid),
                       ("pushName", m.push_name), ("body", m.body), ("mediaType", m.media_type),
                       ("mediaUrl", m.media_url), ("mediaMimetype", m.media_mimetype),
                       ("mediaFilename", m.media_filename), ("caption", m.caption),
                       ("quotedMessageId", m.quoted_message_id), ("outboxId", m.outbox_id),
                       ("outboxStatus", m.outbox_status), ("sendError", m.send_error)):
        if value is not None:
            doc[key] = value
    if m.status is not None:
        doc["status"] = m.status._value_
    for key, ms in (("deliveredAt", m.delivered_at_ms), ("readAt", m.read_at_ms), ("playedAt", m.played_at_ms)):
        if ms is not None:
            doc[key] = ms_to_dt(ms)
    return doc


def receipt_patch(r: Receipt) -> Optional[dict[str, Any]]:
    """What a receipt changes in each of its messages (None: it changes nothing)."""
    status = r.status
    if status is None:
        return None
    return {"status": status.value, _STATUS_TIME[status]: ms_to_dt(r.ts_ms)}


def edit_patch(e: MessageEdit) -> dict[str, Any]:
    patch: dict[str, Any] = {"editedAt": ms_to_dt(e.edited_at_ms)}
    if e.new_body is not None:
        patch["body"] = e.new_body
    if e.new_caption is not None:
        patch["caption"] = e.new_caption
    return patch


def revoke_patch(r: MessageRevoke) -> dict[str, Any]:
    return {"revoked": True, "revokedAt": ms_to_dt(r.revoked_at_ms)}


def merge_patch(stored: Optional[dict], patch: dict[str, Any]) -> dict[str, Any]:
    """Fold an update patch (receipt/edit/revoke) into another patch or a document."""
    return merge_message(stored, patch, now=None)


def merge_message(stored: Optional[dict], incoming: dict[str, Any], now: Optional[datetime]) -> dict[str, Any]:
    """The document after `incoming` (a new copy, or a patch) meets what is stored.

    Order-independent in what matters: status is the later of the two; the first
    delivered/read/played time, creation time and sync source are kept; an edit's text
    wins over any copy of the original; a revoke sticks. `now` (store time) sets
    createdAt on first write and syncedAt on every write; None when merging patches.
    """
    if not stored:
        merged = dict(incoming)
    else:
        merged = dict(stored)
        # The text of the latest edit wins; copies of the original never undo it.
        incoming_edit, stored_edit = incoming.get("editedAt"), stored.get("editedAt")
        text_from_incoming = stored_edit is None or (incoming_edit is not None and incoming_edit >= stored_edit)
        for key, value in incoming.items():
            if value is None or key == "status":
                continue
            if key in ("body", "caption"):
                if text_from_incoming or key not in stored:
                    merged[key] = value
            elif key == "editedAt" and stored_edit is not None:
                merged[key] = max(value, stored_edit)
            elif key not in _KEEP_FIRST or key not in stored:
                merged[key] = value
        status = later_status(_status(stored.get("status")), _status(incoming.get("status")))
        if status is not None:
            merged["status"] = status.value
    if now is not None:
        merged.setdefault("createdAt", now)
        merged.setdefault("tsServer", now)
        merged["syncedAt"] = now
    return merged


def _status(value: Optional[str]) -> Optional[MessageStatus]:
    return MessageStatus(value) if value else None


# --- threads --------------------------------------------------------------------


def thread_fields(update: ThreadUpdate) -> dict[str, Any]:
    doc = {
        "accountId": update.account_id,
        "clientJid": update.client_jid,
        "displayName": update.display_name,
        "isGroup": update.is_group,
        "lastMessageAt": ms_to_dt(update.last_message_at_ms),
        "lastMessageAtMs": update.last_message_at_ms,
        "lastMessagePreview": update.last_message_preview,
        "lastMessageId": update.last_message_id,
        "lastBackfillAt": ms_to_dt(update.last_backfill_at_ms),
        "historyComplete": True if update.history_complete else None,
        "lastBackfillResult": update.last_backfill_result,
    }
    return {k: v for k, v in doc.items() if v is not None}


# The fields that describe a thread's newest stored message (SPEC §2 invariant).
LAST_MESSAGE = ("lastMessageAt", "lastMessageAtMs", "lastMessagePreview", "lastMessageId")


def merge_thread(stored: Optional[dict], update: ThreadUpdate, now: datetime) -> Optional[dict[str, Any]]:
    """The thread document after `update`, or None when nothing would change."""
    incoming = thread_fields(update)
    merged = dict(stored or {})
    mine = (stored or {}).get("lastMessageAtMs"), (stored or {}).get("lastMessageId") or ""
    theirs = incoming.get("lastMessageAtMs"), incoming.get("lastMessageId") or ""
    take_last = theirs[0] is not None and (mine[0] is None or theirs > mine)
    for key, value in incoming.items():
        if key in LAST_MESSAGE:
            if take_last:
                merged[key] = value
        elif key == "lastBackfillAt":
            if "lastBackfillAt" not in merged or value > merged["lastBackfillAt"]:
                merged[key] = value
        elif key == "lastBackfillResult":
            if _later_run(stored or {}, incoming):
                merged[key] = value
        elif key == "displayName" and not value:
            continue
        else:
            merged[key] = value  # historyComplete is only ever sent as True: it never reverts
    if stored is not None and all(stored.get(k) == v for k, v in merged.items() if k != "updatedAt"):
        return None
    merged["updatedAt"] = now
    return merged


def _later_run(stored: dict, incoming: dict) -> bool:
    """Whether `incoming`'s lastBackfillResult is the later run's: ThreadUpdate.merge's
    rule (a missing time counts as oldest; the incoming one wins a tie)."""
    if stored.get("lastBackfillResult") is None:
        return True
    mine, theirs = stored.get("lastBackfillAt"), incoming.get("lastBackfillAt")
    return mine is None or (theirs is not None and theirs >= mine)


# --- accounts --------------------------------------------------------------------

# historySyncCount counts each history chunk once, replays included: per spool (journal)
# the last chunk seq counted. A map of a few entries (one per spool file ever used).
COUNT_MARKS = "historySyncCountMarks"


def new_account_doc(account_id: str, phone: Optional[str], now: datetime) -> dict[str, Any]:
    """A new account's document. Its first status says what will happen (pairing without
    a phone); the supervisor writes every status after that."""
    doc = {"accountId": account_id, "enabled": True, "createdAt": now, "updatedAt": now,
           "status": (AccountStatus.CONNECTING if phone else AccountStatus.PAIRING).value}
    if phone:
        doc["phone"] = phone
    return doc


def patch_needs_stored(patch: AccountPatch) -> bool:
    """Whether applying `patch` depends on what is stored (the replay-safe counter)."""
    return patch.history is not None and bool(patch.history.chunks)


def account_fields(patch: AccountPatch, stored: Optional[dict]) -> dict[str, Any]:
    """The document fields `patch` sets, given the stored document (needed only when
    `patch_needs_stored`). Map values replace what is stored; they never deep-merge."""
    out: dict[str, Any] = {}
    if patch.status is not None:
        out["status"] = patch.status.value
    if patch.phone is not None:
        out["phone"] = patch.phone
    if patch.jid is not None:
        out["jid"] = patch.jid
    if patch.repair is not None:
        needed = patch.repair.needed
        out.update(needsRepair=needed, repairReason=patch.repair.reason if needed else None,
                   repairRequestedAt=ms_to_dt(patch.repair.since_ms) if needed else None)
    if patch.realtime_ingest_ms is not None:
        out["lastRealtimeIngestAt"] = ms_to_dt(patch.realtime_ingest_ms)
    if patch.realtime_message_ms is not None:
        out["lastRealtimeMessageAt"] = ms_to_dt(patch.realtime_message_ms)
    if patch.realtime_error is not None:
        out["lastRealtimeError"] = patch.realtime_error
    history = patch.history
    if history is not None:
        r = history.result
        out["lastHistorySyncAt"] = ms_to_dt(history.at_ms)
        out["lastHistorySyncResult"] = {"saved": r.saved, "skipped": r.skipped, "errors": r.errors,
                                        "total": r.total, "dryRun": r.dry_run}
        if history.chunks:
            stored = stored or {}
            marks = dict(stored.get(COUNT_MARKS) or {})
            fresh = 0
            for spool_id, seq in sorted(history.chunks):
                if seq > marks.get(spool_id, 0):
                    fresh += 1
                    marks[spool_id] = seq
            out["historySyncCount"] = (stored.get("historySyncCount") or 0) + fresh
            out[COUNT_MARKS] = marks
    if patch.backfill is not None:
        out.update(_backfill_fields(patch.backfill))
    if patch.recent_sync is not None:
        out.update(_recent_sync_fields(patch.recent_sync))
    if patch.auto_repair_ms is not None:
        out["lastAutoRepairAt"] = ms_to_dt(patch.auto_repair_ms)
    return out


def _backfill_fields(run: JobRun) -> dict[str, Any]:
    """A backfill run started or finished. A finished run writes its start's times again:
    the writer coalesces patches (later values win), so a start may never be written."""
    started = ms_to_dt(run.started_ms)
    out: dict[str, Any] = {"lastBackfillAt": started, "lastAutoBackfillAt": started,
                           "lastAutoBackfillAttemptAt": started}
    o = run.outcome
    if o is None:
        out["lastBackfillStatus"] = "running"
        out["lastAutoBackfillStatus"] = {"running": True, "startedAt": started, "trigger": run.trigger.value,
                                         "holder": run.holder}
        return out
    figures = {"threads": o.threads, "messages": o.messages, "errors": o.errors}
    on_demand = "available" if o.on_demand else "unavailable"
    out["lastBackfillStats"] = {**figures, "durationMs": o.duration_ms}
    if o.ok:
        out["lastBackfillStatus"] = "success"
        out["lastBackfillError"] = None
        out["lastBackfillResult"] = {**figures, "threadResults": [
            {"chatJid": chat, "messages": messages, "result": result} for chat, messages, result in o.thread_results]}
        out["lastAutoBackfillStatus"] = {"ok": True, "running": False, **figures, "durationMs": o.duration_ms,
                                         "onDemand": on_demand}
        finished_ms = run.finished_ms if run.finished_ms is not None else run.started_ms + o.duration_ms
        out["lastAutoBackfillSuccessAt"] = ms_to_dt(finished_ms)
    else:
        out["lastBackfillStatus"] = "error"
        out["lastBackfillError"] = o.error_message
        out["lastAutoBackfillStatus"] = {"ok": False, "running": False, "errorCode": o.error_code,
                                         "errorMessage": o.error_message, "durationMs": o.duration_ms,
                                         "onDemand": on_demand}
    return out


def _recent_sync_fields(run: JobRun) -> dict[str, Any]:
    """A recent-sync run started or finished (its start's time written again, as above)."""
    out: dict[str, Any] = {"lastRecentSyncAt": ms_to_dt(run.started_ms)}
    o = run.outcome
    if o is not None:
        result = {"ok": o.ok, "threads": o.threads, "messages": o.messages, "errors": o.errors,
                  "durationMs": o.duration_ms}
        if not o.ok:
            result.update(errorCode=o.error_code, errorMessage=o.error_message)
        out["lastRecentSyncResult"] = result
    return out


def account_record(doc: dict) -> AccountRecord:
    """What the daemon needs of a stored account (document or API shape)."""
    status = doc.get("status")
    needed = bool(doc.get("needsRepair"))
    return AccountRecord(
        account_id=doc["accountId"], enabled=doc.get("enabled", True) is not False, phone=doc.get("phone"),
        status=AccountStatus(status) if status in AccountStatus._value2member_map_ else None,
        repair=Repair(needed, doc.get("repairReason") if needed else None,
                      dt_to_ms(doc.get("repairRequestedAt")) if needed else None),
        jobs=job_times(doc))


def job_times(doc: dict) -> JobTimes:
    """The scheduler's stored times; a value another writer left unreadable counts as absent."""
    status = doc.get("lastAutoBackfillStatus")
    ok = status.get("ok") if isinstance(status, dict) and not status.get("running") else None
    return JobTimes(
        last_auto_backfill_ms=_time_or_none(doc.get("lastAutoBackfillAt")),
        last_auto_backfill_success_ms=_time_or_none(doc.get("lastAutoBackfillSuccessAt")),
        last_auto_backfill_attempt_ms=_time_or_none(doc.get("lastAutoBackfillAttemptAt")),
        last_auto_backfill_ok=ok if isinstance(ok, bool) else None,
        last_recent_sync_ms=_time_or_none(doc.get("lastRecentSyncAt")),
        last_auto_repair_ms=_time_or_none(doc.get("lastAutoRepairAt")))


def _time_or_none(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        return dt_to_ms(value)
    except (ValueError, TypeError):
        return None


# --- API shape and cursors --------------------------------------------------------


def to_api(doc: Optional[dict]) -> Optional[dict]:
    """A stored document as the API returns it (JSON-safe; timestamps as ISO strings)."""
    if doc is None:
        return None
    return {key: _api_value(value) for key, value in doc.items()}


def _api_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: _api_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_api_value(v) for v in value]
    return value


def encode_cursor(sort_value: Any, doc_id: str) -> str:
    raw = json.dumps([sort_value, doc_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class BadCursor(ValueError):
    pass


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort_value, doc_id = json.loads(raw)
        # Every list sorts by an integer (ms) and then by document id.
        if not isinstance(doc_id, str) or not isinstance(sort_value, int) or isinstance(sort_value, bool):
            raise ValueError
        return sort_value, doc_id
    except (ValueError, TypeError) as exc:
        raise BadCursor(f"invalid cursor {cursor!r}") from exc


def pending_id(thread: str, message_id: str) -> str:
    return f"{thread}__{message_id}"


def message_key(account_id: str, chat_jid: str, message_id: str) -> tuple[str, str]:
    return thread_id(account_id, chat_jid), message_id


# Outbox documents (`outbox/{id}`): OutboxItem attribute -> document field.
OUTBOX_FIELDS = {"id": "id", "account_id": "accountId", "to_jid": "to", "text": "text",
                 "created_at_ms": "createdAtMs", "client_message_id": "clientMessageId", "status": "status",
                 "attempts": "attempts", "next_attempt_at_ms": "nextAttemptAtMs", "claimed_by": "claimedBy",
                 "claim_epoch": "claimEpoch", "claim_id": "claimId", "wa_message_id": "waMessageId",
                 "sent_at_ms": "sentAtMs", "error": "error", "updated_at_ms": "updatedAtMs"}


def outbox_doc(item: OutboxItem) -> dict:
    doc = {doc_key: getattr(item, attr) for attr, doc_key in OUTBOX_FIELDS.items()}
    doc["status"] = item.status.value
    return doc


def outbox_item(doc: dict) -> OutboxItem:
    fields = {attr: doc[doc_key] for attr, doc_key in OUTBOX_FIELDS.items() if doc.get(doc_key) is not None}
    fields["status"] = OutboxStatus(fields.get("status", "queued"))
    return OutboxItem(**fields)


