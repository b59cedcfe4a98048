"""The neonize protobuf events the simulator sends, built from world values.

Every builder fills each proto2 `required` field (SerializeToString raises otherwise),
so the events are those neonize hands the daemon and runtime/transport/normalize.py is
the one code path for real and simulated traffic. Units are neonize's: MessageInfo
.Timestamp milliseconds; WebMessageInfo.messageTimestamp, Receipt.Timestamp,
KeepAliveTimeout.LastSuccess and TemporaryBan.Expire seconds.

Choices (reviewers take note):
- Messages from the phone itself (protocol traffic, history-sync notifications) arrive
  as whatsmeow shows them: chat = sender = our own JID, IsFromMe, category "peer".
- Outbound group messages name our own JID as participant in history as well as live,
  so both sources give the same sender for the same message.
- Media fields (URL, keys, hashes, sizes) are fakes derived from the message id: stable
  across runs, and nothing downloads them.
- History conversations list their messages newest first, as WhatsApp sends them.
- The conversation part that ends a chat's transfer carries endOfHistoryTransfer=True
  and its endOfHistoryTransferType; other parts carry neither (historysync.py decides).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Sequence, Union

from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waCommon import WACommon_pb2 as wac
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from wasync.runtime.sim.world import DEFAULT_MIMETYPES, Chat, WorldMessage

PN_SERVER = "s.whatsapp.net"
_PT = e2e.ProtocolMessage.Type


def wire(event) -> tuple[str, bytes]:
    """(kind, bytes) of an event as the neonize callback hands it to `normalize`."""
    return event.DESCRIPTOR.name, event.SerializeToString()


# --- JIDs --------------------------------------------------------------------------


def own_jid(phone: str) -> str:
    return f"{phone}@{PN_SERVER}"


def pb_jid(value: str = "") -> npb.JID:
    """A neonize JID from "user@server" or "user:device@server"; "" is the empty JID
    (neonize sends one, IsEmpty set, for every absent JID field)."""
    user, _, server = value.partition("@")
    user, _, device = user.partition(":")
    return npb.JID(User=user, RawAgent=0, Device=int(device or 0), Integrator=0, Server=server, IsEmpty=not value)


def _is_group(chat_jid: str) -> bool:
    return chat_jid.endswith("@g.us")


def _source(chat: str, sender: str, *, from_me: bool) -> npb.MessageSource:
    src = npb.MessageSource(
        Chat=pb_jid(chat), Sender=pb_jid(sender), IsFromMe=from_me, IsGroup=_is_group(chat),
        SenderAlt=pb_jid(), RecipientAlt=pb_jid(), BroadcastListOwner=pb_jid(),
    )
    if src.IsGroup:  # whatsmeow reads a group's addressing mode off the node; ours is phone numbers
        src.AddressingMode = npb.PN
    return src


# --- message content ---------------------------------------------------------------

# MessageInfo.Type and .MediaType as whatsmeow reads them off the message node.
_NODE_TYPES = {
    "text": ("text", ""), "image": ("media", "image"), "video": ("media", "video"), "audio": ("media", "ptt"),
    "document": ("media", "document"), "sticker": ("media", "sticker"), "location": ("media", "location"),
    "contact": ("media", "vcard"), "reaction": ("reaction", ""),
}


def _digest(label: str, msg_id: str) -> bytes:
    return hashlib.sha256(f"wasync-sim:{label}:{msg_id}".encode()).digest()


def _media_fields(msg: WorldMessage) -> dict:
    """Fields every WhatsApp media message carries; fakes derived from the id."""
    path = f"/v/t62.7118-24/sim/{msg.id}.enc"
    key = _digest("mediaKey", msg.id)
    fields = dict(
        URL=f"https://mmg.whatsapp.net{path}?ccb=11-4", directPath=path,
        mimetype=msg.mimetype or DEFAULT_MIMETYPES[msg.type], mediaKey=key,
        fileSHA256=_digest("plain", msg.id), fileEncSHA256=_digest("enc", msg.id),
        fileLength=1024 + int.from_bytes(key[:2], "big") * 16, mediaKeyTimestamp=msg.ts or 0,
    )
    if msg.caption is not None:
        fields["caption"] = msg.caption
    return fields


def _media(msg: WorldMessage) -> e2e.Message:
    f = _media_fields(msg)
    seconds = 5 + f["fileLength"] % 120
    if msg.type == "image":
        return e2e.Message(imageMessage=e2e.ImageMessage(height=1280, width=960, **f))
    if msg.type == "video":
        return e2e.Message(videoMessage=e2e.VideoMessage(seconds=seconds, height=1280, width=720, **f))
    if msg.type == "audio":  # voice notes (PTT) are WhatsApp's usual audio
        return e2e.Message(audioMessage=e2e.AudioMessage(seconds=seconds, PTT=f["mimetype"].startswith("audio/ogg"), **f))
    if msg.type == "document":
        name = msg.filename or ""
        return e2e.Message(documentMessage=e2e.DocumentMessage(fileName=name, title=name, pageCount=1, **f))
    return e2e.Message(stickerMessage=e2e.StickerMessage(height=512, width=512, isAnimated=False, **f))


def _vcard(name: str, msg_id: str) -> str:
    number = "1555" + str(int.from_bytes(_digest("vcard", msg_id)[:4], "big") % 10**7).zfill(7)
    return f"BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL;waid={number}:+{number}\nEND:VCARD"


def content(msg: WorldMessage, chat_jid: str) -> e2e.Message:
    """The e2e Message a world message is on the wire."""
    if msg.type == "text":
        return e2e.Message(conversation=msg.text or "")
    if msg.type == "location":
        loc = e2e.LocationMessage(degreesLatitude=msg.latitude or 0.0, degreesLongitude=msg.longitude or 0.0)
        if msg.text:
            loc.name = msg.text
        return e2e.Message(locationMessage=loc)
    if msg.type == "contact":
        name = msg.text or "Contact"
        return e2e.Message(contactMessage=e2e.ContactMessage(displayName=name, vcard=_vcard(name, msg.id)))
    if msg.type == "reaction":
        key = wac.MessageKey(remoteJID=chat_jid, fromMe=msg.target_from_me, ID=msg.target or "")
        ts_ms = (msg.ts or 0) * 1000
        return e2e.Message(reactionMessage=e2e.ReactionMessage(key=key, text=msg.text or "", senderTimestampMS=ts_ms))
    return _media(msg)


# --- live messages -----------------------------------------------------------------


def _info(src: npb.MessageSource, msg_id: str, ts_ms: int, push_name: str, node_type: str,
          media_type: str = "", category: str = "") -> npb.MessageInfo:
    return npb.MessageInfo(
        MessageSource=src, ID=msg_id, ServerID=0, Type=node_type, Pushname=push_name, Timestamp=ts_ms,
        Category=category, Multicast=False, MediaType=media_type, Edit="",
    )


def _event(info: npb.MessageInfo, message: e2e.Message) -> npb.Message:
    return npb.Message(
        Info=info, Message=message, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False,
        IsViewOnceV2Extension=False, IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=False,
        UnavailableRequestID="", RetryCount=0,
    )


def message_event(account_phone: str, chat_jid: str, msg: WorldMessage, *, push_name: Optional[str] = None,
                  ts_ms: Optional[int] = None) -> npb.Message:
    """A live message in `chat_jid`. Sender: our own JID outbound, the participant in a
    group, else the contact. `push_name` defaults to the message's (an outbound message
    should pass the account's). `ts_ms` overrides `msg.ts` (seconds) for sub-second time."""
    if ts_ms is None:
        if msg.ts is None:
            raise ValueError(f"message {msg.id} has no ts; stamp it or pass ts_ms")
        ts_ms = msg.ts * 1000  # MessageInfo.Timestamp is milliseconds
    if msg.from_me:
        sender = own_jid(account_phone)
    else:
        sender = (msg.sender or "") if _is_group(chat_jid) else chat_jid
    src = _source(chat_jid, sender, from_me=msg.from_me)
    pushname = msg.push_name if push_name is None else push_name
    info = _info(src, msg.id, ts_ms, pushname or "", *_NODE_TYPES[msg.type])
    return _event(info, content(msg, chat_jid))


def protocol_event(account_phone: str, msg_id: str, ts_ms: int, protocol: e2e.ProtocolMessage) -> npb.Message:
    """A protocol message from the account's own phone (peer traffic: no user content)."""
    me = own_jid(account_phone)
    info = _info(_source(me, me, from_me=True), msg_id, ts_ms, "", "protocol", category="peer")
    return _event(info, e2e.Message(protocolMessage=protocol))


def history_sync_notification_event(account_phone: str, msg_id: str, ts_ms: int, *, sync_type: str,
                                    chunk_order: int, progress: Optional[int] = None) -> npb.Message:
    """The `historySyncNotification` the phone sends before each history chunk."""
    blob = f"history:{sync_type}:{chunk_order}:{msg_id}"
    note = e2e.HistorySyncNotification(
        fileSHA256=_digest("plain", blob), fileLength=4096 + chunk_order, mediaKey=_digest("mediaKey", blob),
        fileEncSHA256=_digest("enc", blob), directPath=f"/v/t62.15575-24/sim/{msg_id}.enc",
        syncType=e2e.HistorySyncType.Value(sync_type), chunkOrder=chunk_order,
    )
    if progress is not None:
        note.progress = progress
    pm = e2e.ProtocolMessage(type=_PT.HISTORY_SYNC_NOTIFICATION, historySyncNotification=note)
    return protocol_event(account_phone, msg_id, ts_ms, pm)


def app_state_key_share_event(account_phone: str, msg_id: str, ts_ms: int, key_count: int = 1) -> npb.Message:
    """App-state sync keys shared by the phone: the protocol-only traffic a degraded
    session still sees."""
    keys = [
        e2e.AppStateSyncKey(
            keyID=e2e.AppStateSyncKeyId(keyID=_digest("keyId", f"{msg_id}:{i}")[:6]),
            keyData=e2e.AppStateSyncKeyData(
                keyData=_digest("keyData", f"{msg_id}:{i}"),
                fingerprint=e2e.AppStateSyncKeyFingerprint(rawID=i + 1, currentIndex=0, deviceIndexes=[0, 1]),
                timestamp=ts_ms,
            ),
        )
        for i in range(key_count)
    ]
    pm = e2e.ProtocolMessage(type=_PT.APP_STATE_SYNC_KEY_SHARE, appStateSyncKeyShare=e2e.AppStateSyncKeyShare(keys=keys))
    return protocol_event(account_phone, msg_id, ts_ms, pm)


# --- history sync ------------------------------------------------------------------

_WEB_STATUS = {
    "sent": web.WebMessageInfo.SERVER_ACK, "delivered": web.WebMessageInfo.DELIVERY_ACK,
    "read": web.WebMessageInfo.READ, "played": web.WebMessageInfo.PLAYED,
}


def web_message_info(account_phone: str, chat_jid: str, msg: WorldMessage) -> web.WebMessageInfo:
    """A message as the phone stores it (history sync): timestamp in seconds, direction
    in key.fromMe, group sender in key.participant/participant, outbound status."""
    if msg.ts is None:
        raise ValueError(f"message {msg.id} has no ts")
    key = wac.MessageKey(remoteJID=chat_jid, fromMe=msg.from_me, ID=msg.id)
    info = web.WebMessageInfo(key=key, message=content(msg, chat_jid), messageTimestamp=msg.ts)
    if _is_group(chat_jid):
        info.key.participant = info.participant = own_jid(account_phone) if msg.from_me else (msg.sender or "")
    if msg.from_me:
        info.status = _WEB_STATUS[msg.status or "sent"]
    elif msg.push_name:
        info.pushName = msg.push_name
    return info


# (chat, messages) or (chat, messages, end), as historysync.Conversation.
HistoryConversation = Union[tuple[Chat, Sequence[WorldMessage]], tuple[Chat, Sequence[WorldMessage], Optional[str]]]


def history_sync_event(account_phone: str, sync_type: str, conversations: Iterable[HistoryConversation],
                       *, chunk_order: int = 0, progress: Optional[int] = None) -> npb.HistorySync:
    """One history chunk. `sync_type` is a HistorySyncType name ("INITIAL_BOOTSTRAP",
    "RECENT", "ON_DEMAND", ...); each conversation is (chat, the messages it carries) or
    (chat, messages, end): an EndOfHistoryTransferType name (or None) for the part that
    ends the chat's transfer (historysync.Conversation)."""
    data = hs.HistorySync(syncType=hs.HistorySync.HistorySyncType.Value(sync_type), chunkOrder=chunk_order)
    if progress is not None:
        data.progress = progress
    for chat, messages, *end in conversations:
        conv = data.conversations.add(ID=chat.jid)
        if chat.name:
            conv.name = chat.name
        if end and end[0]:
            conv.endOfHistoryTransfer = True
            conv.endOfHistoryTransferType = hs.Conversation.EndOfHistoryTransferType.Value(end[0])
        newest_first = sorted(messages, key=lambda x: x.ts or 0, reverse=True)
        for order, msg in enumerate(newest_first):
            conv.messages.add(message=web_message_info(account_phone, chat.jid, msg), msgOrderID=order)
        if newest_first:
            conv.lastMsgTimestamp = conv.conversationTimestamp = newest_first[0].ts or 0
    return npb.HistorySync(Data=data)


# --- receipts and session events -----------------------------------------------------

_RECEIPT_TYPES = {"delivered": npb.Receipt.DELIVERED, "read": npb.Receipt.READ, "played": npb.Receipt.PLAYED}


def receipt_event(account_phone: str, chat_jid: str, ids: Sequence[str], type: str, ts_seconds: int,
                  *, reader_jid: Optional[str] = None) -> npb.Receipt:
    """A receipt for the account's outbound messages `ids`. The reader is the contact in
    a 1:1 chat; in a group pass `reader_jid` (the participant who read). `account_phone`
    is not on the wire (receipts name the reader) and is kept for a uniform signature."""
    reader = reader_jid or ("" if _is_group(chat_jid) else chat_jid)
    return npb.Receipt(
        MessageSource=_source(chat_jid, reader, from_me=False), MessageIDs=list(ids),
        Timestamp=ts_seconds, Type=_RECEIPT_TYPES[type],  # Receipt.Timestamp is seconds
    )


def connected_event() -> npb.Connected:
    return npb.Connected(status=True)


def disconnected_event() -> npb.Disconnected:
    return npb.Disconnected(status=True)


def logged_out_event(reason: str = "LOGGED_OUT", *, on_connect: bool = False) -> npb.LoggedOut:
    return npb.LoggedOut(OnConnect=on_connect, Reason=npb.ConnectFailureReason.Value(reason))


def stream_replaced_event() -> npb.StreamReplaced:
    return npb.StreamReplaced()


def keepalive_timeout_event(error_count: int, last_success_s: int) -> npb.KeepAliveTimeout:
    return npb.KeepAliveTimeout(ErrorCount=error_count, LastSuccess=last_success_s)


def keepalive_restored_event() -> npb.KeepAliveRestored:
    return npb.KeepAliveRestored()


def temporary_ban_event(code: str, expire_s: float) -> npb.TemporaryBan:
    # neonize encodes Expire as int64(duration.Seconds()).
    return npb.TemporaryBan(Code=npb.TemporaryBan.TempBanReason.Value(code), Expire=int(expire_s))


def offline_sync_completed_event(count: int) -> npb.OfflineSyncCompleted:
    return npb.OfflineSyncCompleted(Count=count)


def pair_status_event(success: bool, jid: str = "", error: str = "", *, business_name: str = "",
                      platform: str = "android") -> npb.PairStatus:
    """Pairing outcome. `jid` is the new device's JID ("15550001111:12@s.whatsapp.net"
    or without a device); failures carry the empty JID and `error`."""
    status = npb.PairStatus.SUCCESS if success else npb.PairStatus.ERROR
    event = npb.PairStatus(ID=pb_jid(jid if success else ""), BusinessName=business_name,
                           Platform=platform if success else "", Status=status)
    if error:
        event.Error = error
    return event


def qr_event(codes: Iterable[str]) -> npb.QR:
    return npb.QR(Codes=list(codes))
