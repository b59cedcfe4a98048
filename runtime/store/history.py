"""A thread's history as the backfill engine reads it from either store, and the rule
that repairs a thread document's last-message fields. Pure: the stores do the I/O.

The stores hand in the documents they read (a message document with its id under "id");
what those documents mean is decided here, once for both stores.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from wasync.runtime.backfill import MessageRef, ThreadHistory
from wasync.runtime.model import Direction, Message, MessageType, SyncSource, ThreadUpdate
from wasync.runtime.store.schema import LAST_MESSAGE, dt_to_ms, thread_fields

# Message fields a history read needs of its bounds (Firestore reads only these).
BOUND_FIELDS = ("tsClientMs", "direction")
# What SPEC §2 says a thread shows of its newest message. lastMessageId is rewritten
# with them (merge_thread breaks ties by it) but never calls for a rewrite on its own:
# documents of the old backend have none.
_SHOWN = ("lastMessageAt", "lastMessageAtMs", "lastMessagePreview")


def message_ref(doc: dict) -> MessageRef:
    """A stored message as a backfill anchor."""
    return MessageRef(id=doc["id"], ts_ms=int(doc["tsClientMs"]), from_me=doc.get("direction") == "outbound")


def thread_history(account_id: str, chat_jid: str, thread: Optional[dict], oldest: Optional[dict],
                   newest: Optional[dict], stored: int) -> Optional[ThreadHistory]:
    """What a store read of one thread amounts to (its document, its oldest and newest
    message documents, how many messages); None when there is nothing at all."""
    if thread is None and stored == 0:
        return None
    thread = thread or {}
    return ThreadHistory(
        account_id=account_id, chat_jid=chat_jid, last_message_at_ms=thread.get("lastMessageAtMs"),
        oldest=message_ref(oldest) if oldest else None, newest=message_ref(newest) if newest else None,
        stored=stored, complete=thread.get("historyComplete") is True,
        last_backfill_at_ms=dt_to_ms(thread.get("lastBackfillAt")),
        last_backfill_result=thread.get("lastBackfillResult"))


def chat_of(account_id: str, thread: str) -> str:
    """The chat JID of one of the account's thread ids (`{accountId}__{chatJid}`)."""
    return thread[len(account_id) + 2:]


def plan_repair(threads: Sequence[tuple[str, dict]],
                newest: dict[str, dict]) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """For thread documents as read (id, document) and the newest stored message of each
    that has any: the fields to rewrite per thread so that it describes that message
    again (those a message's own ThreadUpdate writes), and the ids of the documents that
    lacked them. Threads without messages are left alone."""
    fixes: dict[str, dict[str, Any]] = {}
    missing = []
    for tid, doc in threads:
        if tid not in newest:
            continue
        fields = thread_fields(ThreadUpdate.from_message(_stored_message(newest[tid])))
        if all(doc.get(key) == fields.get(key) for key in _SHOWN):
            continue
        fixes[tid] = {key: fields[key] for key in LAST_MESSAGE}
        if any(doc.get(key) is None for key in _SHOWN):
            missing.append(tid)  # [schema-guard]: the inbox can neither sort nor preview it
    return fixes, tuple(missing)


def _stored_message(doc: dict) -> Message:
    """A stored message document back as a Message, as far as its thread fields need
    (time, id, preview); values older writers left that no enum knows are tolerated."""
    kind = doc.get("messageType")
    return Message(
        id=doc["id"], account_id=doc.get("accountId", ""), client_jid=doc.get("clientJid", ""),
        direction=Direction.OUTBOUND if doc.get("direction") == "outbound" else Direction.INBOUND,
        message_type=MessageType(kind) if kind in MessageType._value2member_map_ else MessageType.OTHER,
        ts_client_ms=int(doc["tsClientMs"]), sync_source=SyncSource.REALTIME,  # not a thread field
        body=doc.get("body"), caption=doc.get("caption"), is_group=bool(doc.get("isGroup")))
