"""History sync: neonize `HistorySync` events and WhatsApp's stored-message records
(`WebMessageInfo`) as domain values. Same rules as normalize.py (see its docstring);
what differs here: timestamps are seconds, direction comes from key.fromMe (the
account's own JID is not in the event), `@lid` JIDs resolve through the conversation's
pnJID/lidJID and the batch's phone-number/LID table, and anything that is not a
content message (protocol, stub, empty, an edit or revoke of an older message) is
counted in `HistoryBatch.skipped`, never returned. A conversation whose
endOfHistoryTransferType is COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY (WhatsApp:
nothing older exists) gives its thread `history_complete=True`; the messages of an
ON_DEMAND batch (answers to our own history requests) are `SyncSource.BACKFILL`.
"""
from __future__ import annotations

from typing import Optional, Union

from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from wasync.runtime import model as m
from wasync.runtime.transport.normalize import (
    STATUS_BROADCAST,
    Content,
    bare_jid,
    classify,
    content_fields,
    is_group_jid,
    non_content_event,
    prefer_phone,
)

_WS = web.WebMessageInfo.Status
_HISTORY_STATUS = {
    _WS.ERROR: m.MessageStatus.FAILED,
    _WS.PENDING: m.MessageStatus.QUEUED,
    _WS.SERVER_ACK: m.MessageStatus.SENT,
    _WS.DELIVERY_ACK: m.MessageStatus.DELIVERED,
    _WS.READ: m.MessageStatus.READ,
    _WS.PLAYED: m.MessageStatus.PLAYED,
}


def message_from_web_info(
    account_id: str,
    info: web.WebMessageInfo,
    *,
    chat_jid: Optional[str] = None,
    chat_alt_jid: Optional[str] = None,
    lid_to_pn: Optional[dict[str, str]] = None,
    sync_source: m.SyncSource = m.SyncSource.HISTORY_SYNC,
    chat_resolved: bool = False,
) -> m.NormalizedEvent:
    """One stored-history message (history sync, and any other WebMessageInfo source).
    `chat_jid` defaults to key.remoteJID; `lid_to_pn` maps bare `@lid` to phone JIDs;
    `chat_resolved`: `chat_jid`/`chat_alt_jid` already went through prefer_phone (the
    conversation's, once for all its messages)."""
    lid_to_pn = lid_to_pn or {}
    key = info.key
    if chat_resolved and chat_jid:
        client_jid, chat_alt = chat_jid, chat_alt_jid
    else:
        client_jid, chat_alt = prefer_phone(chat_jid or key.remoteJID, chat_alt_jid, lid_to_pn)
    if not key.ID or not client_jid:
        return m.Ignored(account_id, reason="message_without_id")
    ts_ms = info.messageTimestamp * 1000  # WebMessageInfo timestamps are seconds
    kind = classify(info.message if info.HasField("message") else None)
    if not isinstance(kind, Content):
        return non_content_event(account_id, client_jid, key.ID, ts_ms, kind)
    is_group = is_group_jid(client_jid)
    if is_group:
        sender, sender_alt = prefer_phone(info.participant or key.participant, None, lid_to_pn)
    elif key.fromMe:
        sender, sender_alt = None, None
    else:
        sender, sender_alt = client_jid, chat_alt
    # `status` is proto2 with ERROR as value 0: only a status actually sent counts.
    status = _HISTORY_STATUS.get(info.status) if key.fromMe and info.HasField("status") else None
    return m.Message(
        id=key.ID,
        account_id=account_id,
        client_jid=client_jid,
        direction=m.Direction.OUTBOUND if key.fromMe else m.Direction.INBOUND,
        ts_client_ms=ts_ms,
        sync_source=sync_source,
        sender_jid=sender,
        sender_alt_jid=sender_alt,
        push_name=info.pushName or None,
        status=status,
        is_group=is_group,
        **content_fields(kind),
    )


# The model's names are the proto's; a type WhatsApp adds later becomes OTHER.
_SYNC_TYPES = {
    v.number: m.HistorySyncType[v.name]
    for v in hs.HistorySync.HistorySyncType.DESCRIPTOR.values
    if v.name in m.HistorySyncType.__members__
}


def _sync_type(data: hs.HistorySync) -> m.HistorySyncType:
    # An absent syncType would read as INITIAL_BOOTSTRAP (value 0); don't claim that.
    if not data.HasField("syncType"):
        return m.HistorySyncType.OTHER
    return _SYNC_TYPES.get(data.syncType, m.HistorySyncType.OTHER)


_NO_MORE_ON_PRIMARY = hs.Conversation.EndOfHistoryTransferType.COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY


def messages_from_history(account_id: str, event: Union[npb.HistorySync, hs.HistorySync]) -> m.HistoryBatch:
    """A neonize `HistorySync` event (or its `.Data`) as one HistoryBatch."""
    data = event.Data if isinstance(event, npb.HistorySync) else event
    sync_type = _sync_type(data)
    source = m.SyncSource.BACKFILL if sync_type is m.HistorySyncType.ON_DEMAND else m.SyncSource.HISTORY_SYNC
    lid_to_pn = {
        bare_jid(x.lidJID): bare_jid(x.pnJID) for x in data.phoneNumberToLidMappings if x.lidJID and x.pnJID
    }
    pushnames = {bare_jid(p.ID): p.pushname for p in data.pushnames if p.ID and p.pushname}
    messages: list[m.Message] = []
    threads: list[m.ThreadUpdate] = []
    skipped = 0
    for conv in data.conversations:
        remote_jids = (x.message.key.remoteJID for x in conv.messages if x.message.key.remoteJID)
        raw_chat = conv.ID or next(remote_jids, "")
        # The conversation names its other identity: pnJID for an @lid chat, else lidJID.
        alt_hint = conv.pnJID if raw_chat.endswith("@lid") else conv.lidJID
        chat, chat_alt = prefer_phone(raw_chat, alt_hint, lid_to_pn)
        if not chat or chat == STATUS_BROADCAST:
            skipped += len(conv.messages)
            continue
        name = conv.name or conv.displayName or pushnames.get(chat) or pushnames.get(chat_alt) or None
        complete = True if conv.endOfHistoryTransferType == _NO_MORE_ON_PRIMARY else None
        threads.append(m.ThreadUpdate(account_id, chat, display_name=name, is_group=is_group_jid(chat),
                                      history_complete=complete))
        for entry in conv.messages:
            result = message_from_web_info(
                account_id, entry.message, chat_jid=chat, chat_alt_jid=chat_alt, lid_to_pn=lid_to_pn,
                sync_source=source, chat_resolved=True,
            )
            if isinstance(result, m.Message):
                messages.append(result)
            else:  # protocol, stub, empty, edits/revokes of older messages, id-less
                skipped += 1
    return m.HistoryBatch(
        account_id=account_id,
        sync_type=sync_type,
        messages=tuple(messages),
        threads=tuple(threads),
        chunk_order=data.chunkOrder,
        progress=data.progress if data.HasField("progress") else None,
        skipped=skipped,
    )
