"""Pure translation of neonize protobuf events into domain values (runtime/model.py).

`normalize(account_id, kind, raw)` parses one event the way the neonize callback hands
it over (class name + serialized bytes) and says what it means for the mirror. Nothing
here does I/O or counts: callers count what comes back (`Message.message_type` OTHER,
`ProtocolMessage.kind`, `Ignored.reason`, `HistoryBatch.skipped`).

Identity rules (choices made here, reviewers take note):
- JIDs are rendered "user@server" without device or agent, so one person is one id.
- A 1:1 chat addressed by `@lid` is keyed by its phone-number JID whenever the event
  names it (live: SenderAlt for inbound, RecipientAlt for outbound; history: the
  conversation's pnJID, else the batch's phone-number/LID table), so realtime and
  history land in the same thread. Without a phone JID the `@lid` JID is kept.
- `sender_jid`: groups -> the participant (phone JID preferred, the `@lid` one goes to
  `sender_alt_jid`); 1:1 inbound -> the contact (== client_jid, alt = its other JID);
  1:1 outbound -> None, because history sync never says who "me" is and both sources
  must produce the same record for the same message.
- Times are milliseconds. neonize's MessageInfo.Timestamp already is; Receipt,
  KeepAliveTimeout and history WebMessageInfo carry seconds.
- Chat `status@broadcast` (status posts) is not an inbox thread: Ignored live,
  skipped in history.
- Proto2 enums read as their first value when absent; every enum read here checks
  presence first, so a field neonize left out never becomes DELIVERED or GENERIC.

History sync lives in history.py and reuses the helpers below.

Note: importing `neonize.proto` executes `neonize/__init__.py`; keeping the Go library
from loading there (SPHINX=1) is the process entry point's job, not this module's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from wasync.runtime import model as m

PN_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
STATUS_BROADCAST = "status@broadcast"
# Wrappers nest (ephemeral(viewOnce(...))); the bound keeps hostile input finite.
MAX_UNWRAP_DEPTH = 8

EVENT_KINDS = (
    "Message", "HistorySync", "Receipt", "Connected", "Disconnected", "LoggedOut",
    "StreamReplaced", "KeepAliveTimeout", "KeepAliveRestored", "TemporaryBan",
    "ConnectFailure", "OfflineSyncCompleted", "PairStatus", "QR", "UndecryptableMessage",
)


class NormalizeError(ValueError):
    """The raw bytes do not parse as the neonize event they were announced as."""


def event_kind(event: PbMessage) -> str:
    """The `kind` to pass to `normalize` for a neonize event object (its class name)."""
    return event.DESCRIPTOR.name


def normalize(account_id: str, kind: str, raw: bytes) -> list[m.NormalizedEvent]:
    """What one raw neonize event means. Raises NormalizeError for anything it cannot read:
    the caller quarantines that one event with the reason and goes on."""
    if kind not in EVENT_KINDS:
        return [m.Ignored(account_id, reason=f"unknown_event:{kind}")]
    event = _parse(kind, raw)
    try:
        try:
            events = _meaning(account_id, kind, event)
            if not _undecoded(events):
                return events
        except TypeError:
            pass  # a reader tripped over text that came back as bytes: decode it, read again
        repair_text(event)
        return _meaning(account_id, kind, event)
    except Exception as exc:  # a value no reader expected: this event, not the account, is the problem
        raise NormalizeError(f"neonize.{kind} could not be read: {type(exc).__name__}: {exc}") from exc


def _meaning(account_id: str, kind: str, event: PbMessage) -> list[m.NormalizedEvent]:
    if kind == "Message":
        return [message_from_event(account_id, event)]
    if kind == "HistorySync":
        return [messages_from_history(account_id, event)]
    if kind == "Receipt":
        return [receipt_from_event(account_id, event)]
    return [session_event(account_id, event)]


def _parse(kind: str, raw: bytes) -> PbMessage:
    # FromString does not enforce proto2 `required`: partial events still parse, and
    # every reader below tolerates missing fields.
    try:
        return getattr(npb, kind).FromString(raw)
    except (DecodeError, TypeError) as exc:
        size = len(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else "?"
        raise NormalizeError(f"{size} bytes do not parse as neonize.{kind}: {exc}") from exc


# --- text that is not UTF-8 --------------------------------------------------------
# Go lets any bytes into a proto2 string field, and the Python parser hands such a field
# back as bytes instead of str. Left alone, a body would be stored as b'...' (or the
# store would refuse a whole history chunk for one message); instead the text is
# decoded with U+FFFD where it is not UTF-8, as WhatsApp clients show it.


def _undecoded(events: list[m.NormalizedEvent]) -> bool:
    for event in events:
        values = (event.messages + event.threads) if isinstance(event, m.HistoryBatch) else (event,)
        for value in values:  # hot under history sync: the type checks run in C
            fields = value.__dict__.values()
            if bytes in map(type, fields):
                return True
            if tuple in map(type, fields) and any(bytes in map(type, v) for v in fields if type(v) is tuple):
                return True
    return False


def repair_text(msg: PbMessage) -> None:
    """Decode, in place, every string field of `msg` (nested too) that parsed as bytes."""
    for field, value in msg.ListFields():
        repeated = field.is_repeated
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                values = value.values()
                if field.message_type.fields_by_name["value"].type != field.TYPE_MESSAGE:
                    continue  # map<string, scalar>: not in neonize's events
            else:
                values = value if repeated else (value,)
            for item in values:
                repair_text(item)
        elif field.type == field.TYPE_STRING:
            if repeated:
                if any(isinstance(v, bytes) for v in value):
                    fixed = [_text(v) for v in value]
                    del value[:]
                    value.extend(fixed)
            elif isinstance(value, bytes):
                setattr(msg, field.name, _text(value))


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# --- JIDs -------------------------------------------------------------------------


def jid_str(jid: npb.JID) -> Optional[str]:
    """The "user@server" form of a neonize JID (device dropped); None if empty."""
    user, server = jid.User, jid.Server
    if not isinstance(user, str) or not isinstance(server, str):
        raise TypeError("JID text is not UTF-8")  # normalize() decodes it and reads again
    if not server:
        return None
    return f"{user}@{server}" if user else server


def bare_jid(jid: Optional[str]) -> Optional[str]:
    """A string JID without its ":device" suffix ("1555:3@s.whatsapp.net" -> "1555@...")."""
    if not jid:
        return None
    user, at, server = jid.partition("@")
    return f"{user.split(':', 1)[0]}@{server}" if at else jid


def _server(jid: Optional[str]) -> str:
    return jid.rpartition("@")[2] if jid else ""


def is_group_jid(jid: Optional[str]) -> bool:
    return _server(jid) == GROUP_SERVER


def prefer_phone(
    jid: Optional[str], alt: Optional[str], lid_to_pn: dict[str, str]
) -> tuple[Optional[str], Optional[str]]:
    """(primary, other identity) of one person or 1:1 chat: the phone-number JID is
    primary whenever it is known, so `@lid` and phone addressing meet in one record."""
    jid, alt = bare_jid(jid), bare_jid(alt)
    if _server(jid) == LID_SERVER:
        phone = alt if _server(alt) == PN_SERVER else lid_to_pn.get(jid)
        return (phone, jid) if phone else (jid, None)
    return jid, (alt if _server(alt) == LID_SERVER else None)


def _live_chat(src: npb.MessageSource) -> tuple[Optional[str], Optional[str]]:
    """(client_jid, the chat's other identity) of a live event."""
    chat = jid_str(src.Chat)
    if src.IsGroup or is_group_jid(chat):
        return chat, None
    # The counterpart of a 1:1 chat is the sender inbound and the recipient outbound.
    alt = src.RecipientAlt if src.IsFromMe else src.SenderAlt
    return prefer_phone(chat, jid_str(alt), {})


# --- message content --------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """What an unwrapped e2e Message carries into the stored record."""

    message_type: m.MessageType
    body: Optional[str] = None
    caption: Optional[str] = None
    media_mimetype: Optional[str] = None
    media_filename: Optional[str] = None
    media_url: Optional[str] = None
    quoted_message_id: Optional[str] = None


_WRAPPERS = (
    "ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
    "documentWithCaptionMessage", "editedMessage", "lottieStickerMessage", "deviceSentMessage",
)
# Fields that ride along with real content and say nothing about it.
_METADATA_FIELDS = frozenset({"messageContextInfo"})
_SENDER_KEY_FIELDS = frozenset({"senderKeyDistributionMessage", "fastRatchetKeySenderKeyDistributionMessage"})


_WRAPPER_SET = frozenset(_WRAPPERS)


def unwrap_message(msg: e2e.Message) -> e2e.Message:
    """The innermost message of ephemeral/view-once/document-with-caption/edited/...
    wrappers (at most MAX_UNWRAP_DEPTH levels)."""
    return _unwrapped(msg)[0]


def _unwrapped(msg: e2e.Message) -> tuple[e2e.Message, set[str]]:
    """(the innermost message, the names of its fields that are set). One ListFields per
    level instead of a HasField per wrapper kind: this runs for every history message."""
    for _ in range(MAX_UNWRAP_DEPTH):
        names = {fd.name for fd, _ in msg.ListFields()}
        if names.isdisjoint(_WRAPPER_SET):
            return msg, names
        wrapper = next((w for w in _WRAPPERS if w in names and getattr(msg, w).HasField("message")), None)
        if wrapper is None:
            return msg, names
        msg = getattr(msg, wrapper).message
    return msg, {fd.name for fd, _ in msg.ListFields()}


def _opt(sub: PbMessage, name: str) -> Optional[str]:
    """A string field of `sub` if the type has it and it is non-empty."""
    if name not in sub.DESCRIPTOR.fields_by_name:
        return None
    return getattr(sub, name) or None


def _quoted(sub: PbMessage) -> Optional[str]:
    if "contextInfo" in sub.DESCRIPTOR.fields_by_name and sub.HasField("contextInfo"):
        return sub.contextInfo.stanzaID or None
    return None


def _media(kind: m.MessageType) -> Callable[[PbMessage], Content]:
    def extract(sub: PbMessage) -> Content:
        return Content(
            kind,
            caption=_opt(sub, "caption"),
            media_mimetype=_opt(sub, "mimetype"),
            media_filename=_opt(sub, "fileName"),
            media_url=_opt(sub, "URL"),
        )

    return extract


def _location(sub: PbMessage) -> Content:
    label = " ".join(p for p in (_opt(sub, "name"), _opt(sub, "address")) if p)
    return Content(m.MessageType.LOCATION, body=label or f"{sub.degreesLatitude},{sub.degreesLongitude}")


def _contacts(sub: e2e.ContactsArrayMessage) -> Content:
    names = ", ".join(c.displayName for c in sub.contacts if c.displayName)
    return Content(m.MessageType.CONTACT, body=sub.displayName or names or None)


def _reaction(sub: e2e.ReactionMessage) -> Content:
    # An empty text is WhatsApp's "reaction removed"; body None says the same.
    return Content(m.MessageType.REACTION, body=sub.text or None, quoted_message_id=sub.key.ID or None)


def _poll(sub: e2e.PollCreationMessage) -> Content:
    return Content(m.MessageType.POLL, body=sub.name or None)


_EXTRACTORS: tuple[tuple[str, Callable[[PbMessage], Content]], ...] = (
    ("extendedTextMessage", lambda s: Content(m.MessageType.TEXT, body=s.text or None)),
    ("imageMessage", _media(m.MessageType.IMAGE)),
    ("videoMessage", _media(m.MessageType.VIDEO)),
    ("ptvMessage", _media(m.MessageType.VIDEO)),  # round "video notes"
    ("audioMessage", _media(m.MessageType.AUDIO)),
    ("documentMessage", _media(m.MessageType.DOCUMENT)),
    ("stickerMessage", _media(m.MessageType.STICKER)),
    ("locationMessage", _location),
    ("liveLocationMessage", _location),
    ("contactMessage", lambda s: Content(m.MessageType.CONTACT, body=s.displayName or None)),
    ("contactsArrayMessage", _contacts),
    ("reactionMessage", _reaction),
    ("pollCreationMessage", _poll),
    ("pollCreationMessageV2", _poll),
    ("pollCreationMessageV3", _poll),
    ("pollCreationMessageV5", _poll),
    ("pollCreationMessageV6", _poll),
)


def message_content(msg: e2e.Message) -> Content:
    """The stored shape of a content message; never raises (unknown -> OTHER)."""
    return _content(unwrap_message(msg))


def _content(msg: e2e.Message) -> Content:
    if msg.HasField("conversation"):
        return Content(m.MessageType.TEXT, body=msg.conversation or None)
    for name, extract in _EXTRACTORS:
        if msg.HasField(name):
            sub = getattr(msg, name)
            content = extract(sub)
            return replace(content, quoted_message_id=content.quoted_message_id or _quoted(sub))
    # Unknown kinds still keep their reply context when they carry one.
    subs = [v for fd, v in msg.ListFields() if fd.message_type and fd.name not in _METADATA_FIELDS]
    return Content(m.MessageType.OTHER, quoted_message_id=next(filter(None, map(_quoted, subs)), None))


# --- classification: content, edit, revoke or protocol -----------------------------

_PT = e2e.ProtocolMessage.Type
_PROTOCOL_KINDS = {
    _PT.HISTORY_SYNC_NOTIFICATION: m.ProtocolKind.HISTORY_SYNC_NOTIFICATION,
    _PT.APP_STATE_SYNC_KEY_SHARE: m.ProtocolKind.APP_STATE_SYNC_KEY_SHARE,
    _PT.APP_STATE_SYNC_KEY_REQUEST: m.ProtocolKind.APP_STATE_SYNC_KEY_REQUEST,
    _PT.APP_STATE_FATAL_EXCEPTION_NOTIFICATION: m.ProtocolKind.APP_STATE_FATAL_EXCEPTION,
    _PT.INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC: m.ProtocolKind.INITIAL_SECURITY_NOTIFICATION,
    _PT.EPHEMERAL_SETTING: m.ProtocolKind.EPHEMERAL_SETTING,
    _PT.PEER_DATA_OPERATION_REQUEST_MESSAGE: m.ProtocolKind.PEER_DATA_OPERATION,
    _PT.PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE: m.ProtocolKind.PEER_DATA_OPERATION,
}
# whatsmeow's MessageInfo.Edit attribute: "1" edit, "7" sender revoke, "8" admin revoke.
_EDIT_ATTR_TYPES = {"1": _PT.MESSAGE_EDIT, "7": _PT.REVOKE, "8": _PT.REVOKE}


@dataclass(frozen=True)
class _Edit:
    target_id: str
    content: Content
    edited_at_ms: Optional[int]


@dataclass(frozen=True)
class _Revoke:
    target_id: str


_Classified = Union[Content, _Edit, _Revoke, m.ProtocolKind]


def classify(msg: Optional[e2e.Message], edit_attr: str = "") -> _Classified:
    """Content to store, an edit or revoke of another message, or the ProtocolKind of
    an envelope without user content. `edit_attr` is neonize's MessageInfo.Edit."""
    if msg is None:
        return m.ProtocolKind.EMPTY
    msg, names = _unwrapped(msg)
    if "protocolMessage" in names:
        return _protocol(msg.protocolMessage, edit_attr)
    present = names - _METADATA_FIELDS
    if not present:
        return m.ProtocolKind.EMPTY
    if present <= _SENDER_KEY_FIELDS:
        return m.ProtocolKind.SENDER_KEY_DISTRIBUTION
    return _content(msg)  # already unwrapped: unwrapping twice would double the bound


def _protocol(pm: e2e.ProtocolMessage, edit_attr: str) -> _Classified:
    # An absent `type` reads as REVOKE (value 0) in every client; neonize's edit flag,
    # when present, is the better hint.
    ptype = pm.type if pm.HasField("type") else _EDIT_ATTR_TYPES.get(edit_attr, _PT.REVOKE)
    if ptype == _PT.MESSAGE_EDIT and pm.key.ID:
        return _Edit(pm.key.ID, message_content(pm.editedMessage), pm.timestampMS or None)
    if ptype == _PT.REVOKE and pm.key.ID:
        return _Revoke(pm.key.ID)
    return _PROTOCOL_KINDS.get(ptype, m.ProtocolKind.OTHER)


def content_fields(c: Content) -> dict:
    return dict(
        message_type=c.message_type,
        body=c.body,
        caption=c.caption,
        media_type=c.message_type.value if c.message_type in m.MEDIA_TYPES else None,
        media_url=c.media_url,
        media_mimetype=c.media_mimetype,
        media_filename=c.media_filename,
        quoted_message_id=c.quoted_message_id,
    )


def non_content_event(
    account_id: str, client_jid: str, message_id: str, ts_ms: int, kind: _Classified
) -> m.NormalizedEvent:
    """The record for anything `classify` did not find user content in."""
    if isinstance(kind, _Edit):
        return m.MessageEdit(
            account_id, client_jid, kind.target_id, kind.content.body, kind.content.caption,
            edited_at_ms=kind.edited_at_ms or ts_ms,
        )
    if isinstance(kind, _Revoke):
        return m.MessageRevoke(account_id, client_jid, kind.target_id, revoked_at_ms=ts_ms)
    return m.ProtocolMessage(account_id, client_jid, message_id, kind, ts_ms)


# --- live messages ----------------------------------------------------------------


def message_from_event(account_id: str, event: npb.Message) -> m.NormalizedEvent:
    """One live neonize `Message`: a Message, MessageEdit, MessageRevoke,
    ProtocolMessage, or Ignored."""
    info, src = event.Info, event.Info.MessageSource
    client_jid, chat_alt = _live_chat(src)
    if not info.ID or not client_jid:
        return m.Ignored(account_id, reason="message_without_id")
    if client_jid == STATUS_BROADCAST:
        return m.Ignored(account_id, reason="status_broadcast")
    ts_ms = info.Timestamp  # neonize encodes MessageInfo.Timestamp with UnixMilli
    pb = event.Message if event.HasField("Message") else (event.Raw if event.HasField("Raw") else None)
    kind = classify(pb, info.Edit or ("1" if event.IsEdit else ""))
    if not isinstance(kind, Content):
        return non_content_event(account_id, client_jid, info.ID, ts_ms, kind)
    is_group = src.IsGroup or is_group_jid(client_jid)
    if is_group:
        sender, sender_alt = prefer_phone(jid_str(src.Sender), jid_str(src.SenderAlt), {})
    elif src.IsFromMe:
        sender, sender_alt = None, None
    else:
        sender, sender_alt = client_jid, chat_alt
    return m.Message(
        id=info.ID,
        account_id=account_id,
        client_jid=client_jid,
        direction=m.Direction.OUTBOUND if src.IsFromMe else m.Direction.INBOUND,
        ts_client_ms=ts_ms,
        sync_source=m.SyncSource.REALTIME,
        sender_jid=sender,
        sender_alt_jid=sender_alt,
        push_name=info.Pushname or None,
        status=m.MessageStatus.SENT if src.IsFromMe else None,
        is_group=is_group,
        **content_fields(kind),
    )


# --- history sync (in history.py, which builds on the helpers above) ---------------


def messages_from_history(account_id: str, event: PbMessage) -> m.HistoryBatch:
    """A neonize `HistorySync` event (or its `.Data`) as one HistoryBatch; see history.py."""
    # Imported at use: history.py imports this module's helpers at load time.
    from wasync.runtime.transport import history

    return history.messages_from_history(account_id, event)


# --- receipts and session events ---------------------------------------------------


def _enum_name(event: PbMessage, field: str, default: str = "UNKNOWN") -> str:
    """Name of an enum field; `default` when absent (proto2 would otherwise report the
    enum's first value, e.g. GENERIC or DELIVERED, for a field neonize left out)."""
    if not event.HasField(field):
        return default
    enum = event.DESCRIPTOR.fields_by_name[field].enum_type
    value = enum.values_by_number.get(getattr(event, field))
    return value.name if value else default


_RECEIPT_KINDS = {
    "DELIVERED": m.ReceiptKind.DELIVERED,
    "READ": m.ReceiptKind.READ,
    "READ_SELF": m.ReceiptKind.READ_SELF,
    "PLAYED": m.ReceiptKind.PLAYED,
    "PLAYED_SELF": m.ReceiptKind.PLAYED_SELF,
    "RETRY": m.ReceiptKind.RETRY,
    "SENDER": m.ReceiptKind.SENDER,
    "SERVER_ERROR": m.ReceiptKind.SERVER_ERROR,
    "INACTIVE": m.ReceiptKind.INACTIVE,
    "PEER_MSG": m.ReceiptKind.PEER,
    "HISTORY_SYNC": m.ReceiptKind.HISTORY_SYNC,
}


def receipt_from_event(account_id: str, event: npb.Receipt) -> m.Receipt:
    src = event.MessageSource
    client_jid, _ = _live_chat(src)
    return m.Receipt(
        account_id=account_id,
        client_jid=client_jid or "",
        message_ids=tuple(event.MessageIDs),
        kind=_RECEIPT_KINDS.get(_enum_name(event, "Type"), m.ReceiptKind.OTHER),
        ts_ms=event.Timestamp * 1000,  # Receipt.Timestamp is Unix seconds
        sender_jid=prefer_phone(jid_str(src.Sender), jid_str(src.SenderAlt), {})[0],
    )


def undecryptable_from_event(account_id: str, event: npb.UndecryptableMessage) -> m.UndecryptableMessage:
    info = event.Info
    client_jid, _ = _live_chat(info.MessageSource)
    # MessageInfo.Timestamp is already milliseconds (as for live messages).
    return m.UndecryptableMessage(account_id, client_jid or "", info.ID, info.Timestamp, event.IsUnavailable)


def pair_status_from_event(account_id: str, event: npb.PairStatus) -> Union[m.PairSuccess, m.PairFailure]:
    if _enum_name(event, "Status") == "SUCCESS":
        return m.PairSuccess(account_id, jid_str(event.ID) or "", event.BusinessName, event.Platform)
    return m.PairFailure(account_id, error=event.Error or "pairing failed")


_SESSION_EVENTS: dict[str, Callable[[str, PbMessage], m.SessionEvent]] = {
    "Connected": lambda a, e: m.Connected(a),
    "Disconnected": lambda a, e: m.Disconnected(a),
    "LoggedOut": lambda a, e: m.LoggedOut(a, reason=_enum_name(e, "Reason"), on_connect=e.OnConnect),
    "StreamReplaced": lambda a, e: m.StreamReplaced(a),
    # LastSuccess is Unix seconds; Go's zero time (never succeeded) is negative.
    "KeepAliveTimeout": lambda a, e: m.KeepAliveTimeout(
        a, error_count=e.ErrorCount, last_success_ms=e.LastSuccess * 1000 if e.LastSuccess > 0 else None
    ),
    "KeepAliveRestored": lambda a, e: m.KeepAliveRestored(a),
    # neonize encodes Expire as int64(duration.Seconds()).
    "TemporaryBan": lambda a, e: m.TemporaryBan(a, code=_enum_name(e, "Code"), expires_in_s=e.Expire),
    "ConnectFailure": lambda a, e: m.ConnectFailure(a, reason=_enum_name(e, "Reason"), message=e.Message),
    "OfflineSyncCompleted": lambda a, e: m.OfflineSyncCompleted(a, count=e.Count),
    "PairStatus": pair_status_from_event,
    "QR": lambda a, e: m.QrCode(a, codes=tuple(e.Codes)),
    "UndecryptableMessage": undecryptable_from_event,
}


def session_event(account_id: str, event: PbMessage) -> m.SessionEvent:
    """A connection/pairing event. Raises KeyError for any other neonize event."""
    return _SESSION_EVENTS[event_kind(event)](account_id, event)
