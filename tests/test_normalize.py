"""normalize(): neonize protobuf events -> domain values.

Every event is built from the real neonize classes with all proto2 `required` fields
set, serialized, and normalized from the bytes, so the tests see what the wire carries.
"""
from __future__ import annotations

import pytest
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waCommon import WACommon_pb2 as wac
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from wasync.runtime import model as m
from wasync.runtime.model import Direction, MessageStatus, MessageType, ProtocolKind
from wasync.runtime.transport import normalize as nz
from wasync.runtime.transport.normalize import EVENT_KINDS, NormalizeError, event_kind, normalize

ACCOUNT = "acct-1"
ALICE = "15551234567"
BOB = "15557654321"
ALICE_LID = "123456789012345"
GROUP = "120363000000000001"
TS_MS = 1_700_000_000_123  # neonize MessageInfo.Timestamp: milliseconds
TS_S = 1_700_000_000  # WebMessageInfo / Receipt timestamps: seconds
PT = e2e.ProtocolMessage.Type


# --- builders -------------------------------------------------------------------


def jid(user: str = "", server: str = "s.whatsapp.net", device: int = 0) -> npb.JID:
    server = server if user else ""
    return npb.JID(User=user, RawAgent=0, Device=device, Integrator=0, Server=server, IsEmpty=not user)


def source(chat: npb.JID, sender: npb.JID, *, from_me=False, group=False, sender_alt=None, recipient_alt=None):
    return npb.MessageSource(
        Chat=chat,
        Sender=sender,
        IsFromMe=from_me,
        IsGroup=group,
        SenderAlt=sender_alt or jid(),
        RecipientAlt=recipient_alt or jid(),
        BroadcastListOwner=jid(),
    )


def dm(from_me=False, **kw) -> npb.MessageSource:
    """A 1:1 chat with Alice (inbound from her, or outbound to her from our device 3)."""
    sender = jid(BOB, device=3) if from_me else jid(ALICE, device=2)
    return source(jid(ALICE), sender, from_me=from_me, **kw)


def info(src=None, *, msg_id="MSG1", ts_ms=TS_MS, pushname="", edit="") -> npb.MessageInfo:
    return npb.MessageInfo(
        MessageSource=src or dm(),
        ID=msg_id,
        ServerID=0,
        Type="text",
        Pushname=pushname,
        Timestamp=ts_ms,
        Category="",
        Multicast=False,
        MediaType="",
        Edit=edit,
    )


def live(content: e2e.Message | None, src=None, *, is_edit=False, **info_kw) -> npb.Message:
    event = npb.Message(
        Info=info(src, **info_kw),
        IsEphemeral=False,
        IsViewOnce=False,
        IsViewOnceV2=False,
        IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False,
        IsLottieSticker=False,
        IsEdit=is_edit,
        UnavailableRequestID="",
        RetryCount=0,
    )
    if content is not None:
        event.Message.CopyFrom(content)
    return event


def wire(kind: str, event) -> list:
    raw = event.SerializeToString()  # raises if a required field is missing
    assert event_kind(event) == kind
    return normalize(ACCOUNT, kind, raw)


def one(kind: str, event):
    [result] = wire(kind, event)
    return result


def live_one(content, src=None, **kw):
    return one("Message", live(content, src, **kw))


def web_info(content=None, *, msg_id="H1", remote=f"{ALICE}@s.whatsapp.net", from_me=False, ts_s=TS_S, **fields):
    w = web.WebMessageInfo(key=wac.MessageKey(remoteJID=remote, fromMe=from_me, ID=msg_id), messageTimestamp=ts_s)
    if content is not None:
        w.message.CopyFrom(content)
    for name, value in fields.items():
        setattr(w, name, value)
    return w


def conversation(chat_id: str, *infos, **fields) -> hs.Conversation:
    return hs.Conversation(ID=chat_id, messages=[hs.HistorySyncMsg(message=w) for w in infos], **fields)


def history(*conversations, sync_type=hs.HistorySync.RECENT, **fields) -> npb.HistorySync:
    return npb.HistorySync(Data=hs.HistorySync(syncType=sync_type, conversations=conversations, **fields))


def history_one(content, *, chat_id=f"{ALICE}@s.whatsapp.net", **kw) -> m.Message:
    batch = one("HistorySync", history(conversation(chat_id, web_info(content, remote=chat_id, **kw))))
    [message] = batch.messages
    return message


def text(body: str) -> e2e.Message:
    return e2e.Message(conversation=body)


def ctx(stanza_id: str) -> e2e.ContextInfo:
    return e2e.ContextInfo(stanzaID=stanza_id, participant=f"{BOB}@s.whatsapp.net")


# --- dispatch -------------------------------------------------------------------


def test_every_event_kind_is_a_neonize_class_and_normalizes_its_empty_form():
    for kind in EVENT_KINDS:
        assert getattr(npb, kind).DESCRIPTOR.name == kind
        [result] = normalize(ACCOUNT, kind, b"")  # all-absent fields must not raise
        assert result.account_id == ACCOUNT


def test_unknown_kind_is_ignored_with_reason():
    result = normalize(ACCOUNT, "ChatPresence", b"\x00garbage")
    assert result == [m.Ignored(ACCOUNT, reason="unknown_event:ChatPresence")]


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x05abc", b"not a protobuf at all"])
def test_unparsable_bytes_raise_normalize_error(raw):
    with pytest.raises(NormalizeError, match="neonize.Message") as err:
        normalize(ACCOUNT, "Message", raw)
    assert isinstance(err.value, ValueError)


# 1. text ---------------------------------------------------------------------------


def test_conversation_text():
    msg = live_one(text("hello there"), pushname="Alice")
    assert msg == m.Message(
        id="MSG1",
        account_id=ACCOUNT,
        client_jid=f"{ALICE}@s.whatsapp.net",
        direction=Direction.INBOUND,
        message_type=MessageType.TEXT,
        ts_client_ms=TS_MS,
        sync_source=m.SyncSource.REALTIME,
        body="hello there",
        sender_jid=f"{ALICE}@s.whatsapp.net",
        push_name="Alice",
    )


def test_extended_text():
    msg = live_one(e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text="see https://x.test")))
    assert (msg.message_type, msg.body, msg.media_type) == (MessageType.TEXT, "see https://x.test", None)


# 2. media --------------------------------------------------------------------------

URL = "https://mmg.whatsapp.net/v/t62/abc.enc"


@pytest.mark.parametrize(
    "content, kind, caption, mimetype, filename",
    [
        (e2e.Message(imageMessage=e2e.ImageMessage(URL=URL, mimetype="image/jpeg", caption="pic")),
         MessageType.IMAGE, "pic", "image/jpeg", None),
        (e2e.Message(videoMessage=e2e.VideoMessage(URL=URL, mimetype="video/mp4", caption="vid")),
         MessageType.VIDEO, "vid", "video/mp4", None),
        (e2e.Message(ptvMessage=e2e.VideoMessage(URL=URL, mimetype="video/mp4")),
         MessageType.VIDEO, None, "video/mp4", None),
        (e2e.Message(audioMessage=e2e.AudioMessage(URL=URL, mimetype="audio/ogg; codecs=opus", PTT=True)),
         MessageType.AUDIO, None, "audio/ogg; codecs=opus", None),
        (e2e.Message(documentMessage=e2e.DocumentMessage(URL=URL, mimetype="application/pdf", fileName="a.pdf")),
         MessageType.DOCUMENT, None, "application/pdf", "a.pdf"),
        (e2e.Message(stickerMessage=e2e.StickerMessage(URL=URL, mimetype="image/webp")),
         MessageType.STICKER, None, "image/webp", None),
    ],
    ids=["image", "video", "ptv", "audio", "document", "sticker"],
)
def test_media(content, kind, caption, mimetype, filename):
    msg = live_one(content)
    assert msg.message_type is kind and msg.media_type == kind.value
    assert (msg.caption, msg.media_mimetype, msg.media_filename, msg.media_url) == (caption, mimetype, filename, URL)
    assert msg.body is None


def test_media_without_url_has_no_media_url():
    msg = live_one(e2e.Message(imageMessage=e2e.ImageMessage(mimetype="image/png")))
    assert (msg.message_type, msg.media_url, msg.caption) == (MessageType.IMAGE, None, None)


def test_document_with_caption_wrapper_is_unwrapped():
    doc = e2e.DocumentMessage(URL=URL, mimetype="application/pdf", fileName="invoice.pdf", caption="March")
    inner = e2e.Message(documentMessage=doc)
    wrapped = e2e.Message(documentWithCaptionMessage=e2e.FutureProofMessage(message=inner))
    msg = live_one(wrapped)
    assert (msg.message_type, msg.media_type) == (MessageType.DOCUMENT, "document")
    assert (msg.caption, msg.media_filename, msg.preview) == ("March", "invoice.pdf", "March")


# 3. location, contact, reaction, poll ------------------------------------------------


def test_location_with_name_and_address():
    loc = e2e.LocationMessage(degreesLatitude=37.7749, degreesLongitude=-122.4194, name="Cafe", address="1 Main St")
    msg = live_one(e2e.Message(locationMessage=loc))
    assert (msg.message_type, msg.body) == (MessageType.LOCATION, "Cafe 1 Main St")


def test_location_without_name_uses_coordinates():
    loc = e2e.LocationMessage(degreesLatitude=37.7749, degreesLongitude=-122.4194)
    assert live_one(e2e.Message(locationMessage=loc)).body == "37.7749,-122.4194"
    live_loc = e2e.LiveLocationMessage(degreesLatitude=1.5, degreesLongitude=2.25)
    msg = live_one(e2e.Message(liveLocationMessage=live_loc))
    assert (msg.message_type, msg.body) == (MessageType.LOCATION, "1.5,2.25")


def test_contact_and_contacts_array():
    card = e2e.ContactMessage(displayName="Carol", vcard="BEGIN:VCARD\nEND:VCARD")
    msg = live_one(e2e.Message(contactMessage=card))
    assert (msg.message_type, msg.body) == (MessageType.CONTACT, "Carol")
    many = e2e.ContactsArrayMessage(contacts=[card, e2e.ContactMessage(displayName="Dave")])
    msg = live_one(e2e.Message(contactsArrayMessage=many))
    assert (msg.message_type, msg.body) == (MessageType.CONTACT, "Carol, Dave")
    named = e2e.ContactsArrayMessage(displayName="2 contacts", contacts=[card])
    assert live_one(e2e.Message(contactsArrayMessage=named)).body == "2 contacts"


def test_reaction_points_at_the_reacted_message():
    key = wac.MessageKey(remoteJID=f"{ALICE}@s.whatsapp.net", fromMe=True, ID="TARGET1")
    msg = live_one(e2e.Message(reactionMessage=e2e.ReactionMessage(key=key, text="👍", senderTimestampMS=TS_MS)))
    assert (msg.message_type, msg.body, msg.quoted_message_id) == (MessageType.REACTION, "👍", "TARGET1")


@pytest.mark.parametrize("field", ["pollCreationMessage", "pollCreationMessageV2", "pollCreationMessageV3"])
def test_poll_versions(field):
    poll = e2e.PollCreationMessage(name="Lunch?", options=[e2e.PollCreationMessage.Option(optionName="Pizza")])
    msg = live_one(e2e.Message(**{field: poll}))
    assert (msg.message_type, msg.body) == (MessageType.POLL, "Lunch?")


# 4. quoted ------------------------------------------------------------------------


def test_reply_context_on_text_and_media():
    reply = e2e.ExtendedTextMessage(text="yes", contextInfo=ctx("QUOTED1"))
    assert live_one(e2e.Message(extendedTextMessage=reply)).quoted_message_id == "QUOTED1"
    image = e2e.ImageMessage(URL=URL, caption="this one", contextInfo=ctx("QUOTED2"))
    assert live_one(e2e.Message(imageMessage=image)).quoted_message_id == "QUOTED2"
    assert live_one(text("plain")).quoted_message_id is None


# 5. groups -------------------------------------------------------------------------


def test_live_group_message_names_group_and_participant():
    src = source(jid(GROUP, "g.us"), jid(BOB, device=7), group=True)
    msg = live_one(text("hi all"), src, pushname="Bob")
    assert msg.is_group is True
    assert (msg.client_jid, msg.sender_jid, msg.sender_alt_jid) == (f"{GROUP}@g.us", f"{BOB}@s.whatsapp.net", None)
    assert msg.thread_id == f"{ACCOUNT}__{GROUP}@g.us"


def test_group_recognised_by_server_even_without_flag():
    msg = live_one(text("hi"), source(jid(GROUP, "g.us"), jid(BOB)))
    assert (msg.is_group, msg.sender_jid) == (True, f"{BOB}@s.whatsapp.net")


def test_one_to_one_sender_is_the_contact_inbound_and_none_outbound():
    inbound = live_one(text("in"))
    assert (inbound.client_jid, inbound.sender_jid, inbound.is_group) == (
        f"{ALICE}@s.whatsapp.net", f"{ALICE}@s.whatsapp.net", False)
    outbound = live_one(text("out"), dm(from_me=True))
    assert (outbound.client_jid, outbound.sender_jid) == (f"{ALICE}@s.whatsapp.net", None)


def test_history_group_participant_from_info_or_key():
    chat = f"{GROUP}@g.us"
    by_info = web_info(text("a"), msg_id="G1", remote=chat, participant=f"{BOB}:4@s.whatsapp.net")
    by_key = web_info(text("b"), msg_id="G2", remote=chat)
    by_key.key.participant = f"{ALICE}@s.whatsapp.net"
    batch = one("HistorySync", history(conversation(chat, by_info, by_key, name="Team")))
    assert [(x.sender_jid, x.is_group, x.client_jid) for x in batch.messages] == [
        (f"{BOB}@s.whatsapp.net", True, chat),
        (f"{ALICE}@s.whatsapp.net", True, chat),
    ]
    assert batch.threads == (m.ThreadUpdate(ACCOUNT, chat, display_name="Team", is_group=True),)


# 6. @lid -------------------------------------------------------------------------

ALICE_PN = f"{ALICE}@s.whatsapp.net"
ALICE_LID_JID = f"{ALICE_LID}@lid"


def test_lid_group_sender_resolves_to_phone_with_lid_as_alt():
    src = source(jid(GROUP, "g.us"), jid(ALICE_LID, "lid", device=1), group=True, sender_alt=jid(ALICE))
    msg = live_one(text("hi"), src)
    assert (msg.sender_jid, msg.sender_alt_jid, msg.client_jid) == (ALICE_PN, ALICE_LID_JID, f"{GROUP}@g.us")


def test_phone_sender_keeps_lid_alternate():
    src = source(jid(GROUP, "g.us"), jid(ALICE), group=True, sender_alt=jid(ALICE_LID, "lid"))
    assert live_one(text("hi"), src).sender_alt_jid == ALICE_LID_JID


def test_lid_one_to_one_chat_is_keyed_by_phone_jid():
    inbound = source(jid(ALICE_LID, "lid"), jid(ALICE_LID, "lid", device=2), sender_alt=jid(ALICE))
    msg = live_one(text("hi"), inbound)
    assert (msg.client_jid, msg.sender_jid, msg.sender_alt_jid) == (ALICE_PN, ALICE_PN, ALICE_LID_JID)
    outbound = source(jid(ALICE_LID, "lid"), jid(BOB), from_me=True, recipient_alt=jid(ALICE))
    msg = live_one(text("yo"), outbound)
    assert (msg.client_jid, msg.sender_jid, msg.direction) == (ALICE_PN, None, Direction.OUTBOUND)


def test_lid_without_phone_alternate_stays_lid():
    msg = live_one(text("hi"), source(jid(ALICE_LID, "lid"), jid(ALICE_LID, "lid")))
    assert (msg.client_jid, msg.sender_jid, msg.sender_alt_jid) == (ALICE_LID_JID, ALICE_LID_JID, None)


def test_history_lid_conversation_and_participant_resolve_to_phone():
    dm_conv = conversation(ALICE_LID_JID, web_info(text("a"), remote=ALICE_LID_JID), pnJID=ALICE_PN)
    group = f"{GROUP}@g.us"
    grp_conv = conversation(group, web_info(text("b"), msg_id="H2", remote=group, participant=f"{ALICE_LID}:3@lid"))
    bob = f"{BOB}@s.whatsapp.net"
    pn_conv = conversation(bob, web_info(text("c"), msg_id="H3", remote=bob), pnJID=bob, lidJID="999:1@lid")
    mapping = hs.PhoneNumberToLIDMapping(pnJID=ALICE_PN, lidJID=ALICE_LID_JID)
    batch = one("HistorySync", history(dm_conv, grp_conv, pn_conv, phoneNumberToLidMappings=[mapping]))
    first, second, third = batch.messages
    assert (first.client_jid, first.sender_jid, first.sender_alt_jid) == (ALICE_PN, ALICE_PN, ALICE_LID_JID)
    assert (second.client_jid, second.sender_jid, second.sender_alt_jid) == (group, ALICE_PN, ALICE_LID_JID)
    assert (third.client_jid, third.sender_jid, third.sender_alt_jid) == (bob, bob, "999@lid")
    assert [t.client_jid for t in batch.threads] == [ALICE_PN, group, bob]


# 7. push names -------------------------------------------------------------------


def test_push_names_live_and_history():
    assert live_one(text("x"), pushname="Alice A.").push_name == "Alice A."
    assert live_one(text("x")).push_name is None
    assert history_one(text("x"), pushName="Ally").push_name == "Ally"


# 8. direction and status ------------------------------------------------------------


def test_live_direction_and_status():
    inbound, outbound = live_one(text("a")), live_one(text("b"), dm(from_me=True))
    assert (inbound.direction, inbound.status) == (Direction.INBOUND, None)
    assert (outbound.direction, outbound.status) == (Direction.OUTBOUND, MessageStatus.SENT)


@pytest.mark.parametrize(
    "status, expected",
    [
        (web.WebMessageInfo.ERROR, MessageStatus.FAILED),
        (web.WebMessageInfo.PENDING, MessageStatus.QUEUED),
        (web.WebMessageInfo.SERVER_ACK, MessageStatus.SENT),
        (web.WebMessageInfo.DELIVERY_ACK, MessageStatus.DELIVERED),
        (web.WebMessageInfo.READ, MessageStatus.READ),
        (web.WebMessageInfo.PLAYED, MessageStatus.PLAYED),
    ],
)
def test_history_outbound_status(status, expected):
    msg = history_one(text("x"), from_me=True, status=status)
    assert (msg.direction, msg.status, msg.sender_jid) == (Direction.OUTBOUND, expected, None)


def test_history_status_absent_or_inbound_is_none():
    assert history_one(text("x"), from_me=True).status is None  # absent would read as ERROR
    inbound = history_one(text("x"), status=web.WebMessageInfo.READ)
    assert (inbound.direction, inbound.status) == (Direction.INBOUND, None)


# 9. timestamps -------------------------------------------------------------------


def test_timestamp_units():
    assert live_one(text("x"), ts_ms=1_712_345_678_901).ts_client_ms == 1_712_345_678_901  # ms stays ms
    assert history_one(text("x"), ts_s=1_712_345_678).ts_client_ms == 1_712_345_678_000  # s -> ms
    receipt = npb.Receipt(MessageSource=dm(), MessageIDs=["A"], Timestamp=1_712_345_678, Type=npb.Receipt.READ)
    assert one("Receipt", receipt).ts_ms == 1_712_345_678_000  # s -> ms


# 10. edits and revokes ---------------------------------------------------------------


def edit_of(target: str, new: e2e.Message, **fields) -> e2e.ProtocolMessage:
    key = wac.MessageKey(remoteJID=ALICE_PN, fromMe=False, ID=target)
    return e2e.ProtocolMessage(key=key, type=PT.MESSAGE_EDIT, editedMessage=new, **fields)


def test_edit_in_edited_message_wrapper():
    pm = edit_of("ORIG1", text("fixed typo"), timestampMS=TS_MS + 5000)
    content = e2e.Message(editedMessage=e2e.FutureProofMessage(message=e2e.Message(protocolMessage=pm)))
    assert live_one(content, msg_id="EDIT1", edit="1", is_edit=True) == m.MessageEdit(
        ACCOUNT, ALICE_PN, target_id="ORIG1", new_body="fixed typo", new_caption=None, edited_at_ms=TS_MS + 5000
    )


def test_edit_of_a_caption_without_own_timestamp():
    pm = edit_of("ORIG2", e2e.Message(imageMessage=e2e.ImageMessage(caption="new caption")))
    edit = live_one(e2e.Message(protocolMessage=pm))
    assert (edit.target_id, edit.new_body, edit.new_caption, edit.edited_at_ms) == ("ORIG2", None, "new caption", TS_MS)


def test_edit_flag_classifies_a_protocol_message_without_type():
    pm = e2e.ProtocolMessage(key=wac.MessageKey(ID="ORIG3"), editedMessage=text("v2"))
    for kw in ({"edit": "1"}, {"is_edit": True}):
        edit = live_one(e2e.Message(protocolMessage=pm), **kw)
        assert (type(edit), edit.target_id, edit.new_body) == (m.MessageEdit, "ORIG3", "v2")


def test_revoke():
    pm = e2e.ProtocolMessage(key=wac.MessageKey(remoteJID=ALICE_PN, fromMe=True, ID="GONE1"), type=PT.REVOKE)
    src = dm(from_me=True)
    assert live_one(e2e.Message(protocolMessage=pm), src, edit="7") == m.MessageRevoke(
        ACCOUNT, ALICE_PN, target_id="GONE1", revoked_at_ms=TS_MS
    )


def test_edit_and_revoke_in_history_are_skipped_not_stored():
    revoke = e2e.Message(protocolMessage=e2e.ProtocolMessage(key=wac.MessageKey(ID="X"), type=PT.REVOKE))
    edit = e2e.Message(protocolMessage=edit_of("X", text("y")))
    conv = conversation(ALICE_PN, web_info(revoke, msg_id="R"), web_info(edit, msg_id="E"))
    batch = one("HistorySync", history(conv))
    assert (batch.messages, batch.skipped) == ((), 2)


# 11. wrappers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrapper",
    ["ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
     "documentWithCaptionMessage", "editedMessage"],
)
def test_wrappers_are_unwrapped(wrapper):
    content = e2e.Message(**{wrapper: e2e.FutureProofMessage(message=text("inside"))})
    msg = live_one(content)
    assert (msg.message_type, msg.body) == (MessageType.TEXT, "inside")


def test_nested_wrappers_unwrap_recursively_and_are_bounded():
    image = e2e.Message(imageMessage=e2e.ImageMessage(caption="secret", mimetype="image/jpeg"))
    nested = e2e.Message(ephemeralMessage=e2e.FutureProofMessage(
        message=e2e.Message(viewOnceMessageV2=e2e.FutureProofMessage(message=image))))
    msg = live_one(nested)
    assert (msg.message_type, msg.caption) == (MessageType.IMAGE, "secret")

    deep = text("bottom")
    for _ in range(nz.MAX_UNWRAP_DEPTH + 3):
        deep = e2e.Message(ephemeralMessage=e2e.FutureProofMessage(message=deep))
    assert live_one(deep).message_type is MessageType.OTHER  # gave up, did not raise


# 12. protocol messages -------------------------------------------------------------


@pytest.mark.parametrize(
    "ptype, kind",
    [
        (PT.HISTORY_SYNC_NOTIFICATION, ProtocolKind.HISTORY_SYNC_NOTIFICATION),
        (PT.APP_STATE_SYNC_KEY_SHARE, ProtocolKind.APP_STATE_SYNC_KEY_SHARE),
        (PT.APP_STATE_SYNC_KEY_REQUEST, ProtocolKind.APP_STATE_SYNC_KEY_REQUEST),
        (PT.APP_STATE_FATAL_EXCEPTION_NOTIFICATION, ProtocolKind.APP_STATE_FATAL_EXCEPTION),
        (PT.INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC, ProtocolKind.INITIAL_SECURITY_NOTIFICATION),
        (PT.EPHEMERAL_SETTING, ProtocolKind.EPHEMERAL_SETTING),
        (PT.PEER_DATA_OPERATION_REQUEST_MESSAGE, ProtocolKind.PEER_DATA_OPERATION),
        (PT.PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE, ProtocolKind.PEER_DATA_OPERATION),
        (PT.SHARE_PHONE_NUMBER, ProtocolKind.OTHER),
        (PT.LID_MIGRATION_MAPPING_SYNC, ProtocolKind.OTHER),
    ],
)
def test_protocol_message_kinds(ptype, kind):
    content = e2e.Message(protocolMessage=e2e.ProtocolMessage(type=ptype))
    result = live_one(content, msg_id="P1")
    assert result == m.ProtocolMessage(ACCOUNT, ALICE_PN, "P1", kind, TS_MS)


def test_sender_key_distribution_only_and_empty_messages():
    skd = e2e.SenderKeyDistributionMessage(groupID=f"{GROUP}@g.us", axolotlSenderKeyDistributionMessage=b"k")
    assert live_one(e2e.Message(senderKeyDistributionMessage=skd)).kind is ProtocolKind.SENDER_KEY_DISTRIBUTION
    meta = e2e.MessageContextInfo(messageSecret=b"s")
    with_meta = e2e.Message(senderKeyDistributionMessage=skd, messageContextInfo=meta)
    assert live_one(with_meta).kind is ProtocolKind.SENDER_KEY_DISTRIBUTION
    assert live_one(e2e.Message()).kind is ProtocolKind.EMPTY
    assert live_one(None).kind is ProtocolKind.EMPTY  # no Message field at all
    assert live_one(e2e.Message(messageContextInfo=meta)).kind is ProtocolKind.EMPTY


def test_sender_key_riding_along_with_content_is_a_message():
    skd = e2e.SenderKeyDistributionMessage(groupID=f"{GROUP}@g.us")
    msg = live_one(e2e.Message(senderKeyDistributionMessage=skd, conversation="first in group"))
    assert (msg.message_type, msg.body) == (MessageType.TEXT, "first in group")


# 13. history sync ----------------------------------------------------------------


@pytest.mark.parametrize("value", list(hs.HistorySync.HistorySyncType.DESCRIPTOR.values), ids=lambda v: v.name)
def test_history_sync_types(value):
    batch = one("HistorySync", history(sync_type=value.number))
    assert batch.sync_type is m.HistorySyncType[value.name]


def test_history_batch_messages_threads_and_skipped():
    group = f"{GROUP}@g.us"
    stub = web_info(msg_id="S1", messageStubType=web.WebMessageInfo.GROUP_PARTICIPANT_ADD)
    proto = web_info(e2e.Message(protocolMessage=e2e.ProtocolMessage(type=PT.HISTORY_SYNC_NOTIFICATION)), msg_id="P1")
    event = history(
        conversation(ALICE_PN, web_info(text("one"), msg_id="A1"), proto, web_info(msg_id="E1")),
        conversation(group, stub, web_info(text("two"), msg_id="G1", remote=group, participant=ALICE_PN), name="Team"),
        conversation(f"{BOB}@s.whatsapp.net", displayName="Bobby"),
        conversation("5550000@s.whatsapp.net"),
        sync_type=hs.HistorySync.INITIAL_BOOTSTRAP,
        chunkOrder=3,
        progress=42,
        pushnames=[
            hs.Pushname(ID=ALICE_PN, pushname="Alice P"),
            hs.Pushname(ID=f"{BOB}@s.whatsapp.net", pushname="B"),
        ],
    )
    batch = one("HistorySync", event)
    assert (batch.sync_type, batch.chunk_order, batch.progress, batch.skipped) == (
        m.HistorySyncType.INITIAL_BOOTSTRAP, 3, 42, 3)
    assert [(x.id, x.sync_source, x.body) for x in batch.messages] == [
        ("A1", m.SyncSource.HISTORY_SYNC, "one"), ("G1", m.SyncSource.HISTORY_SYNC, "two")]
    assert batch.threads == (
        m.ThreadUpdate(ACCOUNT, ALICE_PN, display_name="Alice P", is_group=False),  # only a push name
        m.ThreadUpdate(ACCOUNT, group, display_name="Team", is_group=True),
        m.ThreadUpdate(ACCOUNT, f"{BOB}@s.whatsapp.net", display_name="Bobby", is_group=False),
        m.ThreadUpdate(ACCOUNT, "5550000@s.whatsapp.net", display_name=None, is_group=False),
    )


EOH = hs.Conversation.EndOfHistoryTransferType


@pytest.mark.parametrize("end_type, complete", [
    (None, None),  # not said: nothing known
    (EOH.COMPLETE_BUT_MORE_MESSAGES_REMAIN_ON_PRIMARY, None),
    (EOH.COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY, True),
    (EOH.COMPLETE_ON_DEMAND_SYNC_BUT_MORE_MSG_REMAIN_ON_PRIMARY, None),
    (EOH.COMPLETE_ON_DEMAND_SYNC_WITH_MORE_MSG_ON_PRIMARY_BUT_NO_ACCESS, None),
])
@pytest.mark.parametrize("sync_type", [hs.HistorySync.RECENT, hs.HistorySync.ON_DEMAND], ids=["RECENT", "ON_DEMAND"])
def test_history_complete_only_when_nothing_older_remains_on_the_phone(end_type, complete, sync_type):
    fields = {} if end_type is None else {"endOfHistoryTransfer": True, "endOfHistoryTransferType": end_type}
    batch = one("HistorySync", history(conversation(ALICE_PN, web_info(text("x")), **fields), sync_type=sync_type))
    [thread] = batch.threads
    assert thread.history_complete is complete


def test_on_demand_messages_are_backfill_everything_else_history_sync():
    def sources(sync_type) -> set:
        batch = one("HistorySync", history(conversation(ALICE_PN, web_info(text("x")), web_info(text("y"), msg_id="H2")),
                                           sync_type=sync_type))
        return {x.sync_source for x in batch.messages}

    assert sources(hs.HistorySync.ON_DEMAND) == {m.SyncSource.BACKFILL}
    for other in (hs.HistorySync.INITIAL_BOOTSTRAP, hs.HistorySync.RECENT, hs.HistorySync.FULL):
        assert sources(other) == {m.SyncSource.HISTORY_SYNC}


def test_history_progress_absent_and_chat_falls_back_to_key_remote_jid():
    batch = one("HistorySync", history(conversation("", web_info(text("x"), remote=ALICE_PN))))
    assert batch.progress is None and batch.chunk_order == 0
    assert [x.client_jid for x in batch.messages] == [ALICE_PN]
    assert batch.threads[0].client_jid == ALICE_PN


def test_history_media_and_quote_and_status_broadcast():
    image = e2e.ImageMessage(URL=URL, mimetype="image/jpeg", caption="c", contextInfo=ctx("Q9"))
    msg = history_one(e2e.Message(imageMessage=image))
    assert (msg.message_type, msg.media_type, msg.caption, msg.media_url, msg.quoted_message_id) == (
        MessageType.IMAGE, "image", "c", URL, "Q9")
    status = conversation("status@broadcast", web_info(text("story"), remote="status@broadcast"))
    batch = one("HistorySync", history(status))
    assert (batch.messages, batch.threads, batch.skipped) == ((), (), 1)


def test_message_from_web_info_is_usable_directly():
    from wasync.runtime.transport.history import message_from_web_info

    msg = message_from_web_info(ACCOUNT, web_info(text("x"), from_me=True), sync_source=m.SyncSource.BACKFILL)
    assert (msg.client_jid, msg.sync_source, msg.direction) == (ALICE_PN, m.SyncSource.BACKFILL, Direction.OUTBOUND)


# 14. receipts ---------------------------------------------------------------------

RECEIPT_KINDS = {
    "DELIVERED": m.ReceiptKind.DELIVERED, "READ": m.ReceiptKind.READ, "READ_SELF": m.ReceiptKind.READ_SELF,
    "PLAYED": m.ReceiptKind.PLAYED, "PLAYED_SELF": m.ReceiptKind.PLAYED_SELF, "RETRY": m.ReceiptKind.RETRY,
    "SENDER": m.ReceiptKind.SENDER, "SERVER_ERROR": m.ReceiptKind.SERVER_ERROR,
    "INACTIVE": m.ReceiptKind.INACTIVE, "PEER_MSG": m.ReceiptKind.PEER, "HISTORY_SYNC": m.ReceiptKind.HISTORY_SYNC,
}


@pytest.mark.parametrize("value", list(npb.Receipt.ReceiptType.DESCRIPTOR.values), ids=lambda v: v.name)
def test_every_receipt_type(value):
    src = source(jid(ALICE), jid(ALICE, device=2))
    event = npb.Receipt(MessageSource=src, MessageIDs=["M1", "M2"], Timestamp=TS_S, Type=value.number)
    assert one("Receipt", event) == m.Receipt(
        ACCOUNT, ALICE_PN, ("M1", "M2"), RECEIPT_KINDS[value.name], TS_S * 1000, sender_jid=ALICE_PN
    )


def test_receipt_without_type_is_other_and_group_receipt_names_reader():
    partial = npb.Receipt(MessageSource=dm(), MessageIDs=["M1"], Timestamp=TS_S)
    [receipt] = normalize(ACCOUNT, "Receipt", partial.SerializePartialToString())
    assert receipt.kind is m.ReceiptKind.OTHER and receipt.status is None  # not the proto2 default DELIVERED
    src = source(jid(GROUP, "g.us"), jid(ALICE_LID, "lid"), group=True, sender_alt=jid(ALICE))
    group = one("Receipt", npb.Receipt(MessageSource=src, MessageIDs=["M1"], Timestamp=TS_S, Type=npb.Receipt.READ))
    assert (group.client_jid, group.sender_jid, group.status) == (f"{GROUP}@g.us", ALICE_PN, MessageStatus.READ)


# 15. session events ---------------------------------------------------------------


def test_connection_events():
    assert one("Connected", npb.Connected(status=True)) == m.Connected(ACCOUNT)
    assert one("Disconnected", npb.Disconnected(status=True)) == m.Disconnected(ACCOUNT)
    assert one("StreamReplaced", npb.StreamReplaced()) == m.StreamReplaced(ACCOUNT)
    assert one("KeepAliveRestored", npb.KeepAliveRestored()) == m.KeepAliveRestored(ACCOUNT)
    assert one("OfflineSyncCompleted", npb.OfflineSyncCompleted(Count=17)) == m.OfflineSyncCompleted(ACCOUNT, 17)


@pytest.mark.parametrize("reason", ["LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"])
def test_logged_out_reason_names(reason):
    event = npb.LoggedOut(OnConnect=True, Reason=npb.ConnectFailureReason.Value(reason))
    assert one("LoggedOut", event) == m.LoggedOut(ACCOUNT, reason=reason, on_connect=True)


def test_keepalive_timeout_seconds_to_ms():
    event = npb.KeepAliveTimeout(ErrorCount=3, LastSuccess=TS_S)
    assert one("KeepAliveTimeout", event) == m.KeepAliveTimeout(ACCOUNT, 3, TS_S * 1000)
    never = npb.KeepAliveTimeout(ErrorCount=1, LastSuccess=-62135596800)  # Go's zero time
    assert one("KeepAliveTimeout", never).last_success_ms is None


def test_temporary_ban_and_connect_failure():
    ban = npb.TemporaryBan(Code=npb.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE, Expire=3600)
    assert one("TemporaryBan", ban) == m.TemporaryBan(ACCOUNT, "SENT_TOO_MANY_SAME_MESSAGE", 3600)
    failure = npb.ConnectFailure(Reason=npb.CLIENT_OUTDATED, Message="update", Raw=npb.Node(Tag="failure"))
    assert one("ConnectFailure", failure) == m.ConnectFailure(ACCOUNT, "CLIENT_OUTDATED", "update")


def test_pair_status_success_and_failure():
    ok = npb.PairStatus(
        ID=jid(ALICE, device=14), BusinessName="Shop", Platform="android", Status=npb.PairStatus.SUCCESS
    )
    assert one("PairStatus", ok) == m.PairSuccess(ACCOUNT, ALICE_PN, "Shop", "android")
    bad = npb.PairStatus(ID=jid(), BusinessName="", Platform="", Status=npb.PairStatus.ERROR, Error="timeout")
    assert one("PairStatus", bad) == m.PairFailure(ACCOUNT, "timeout")


def test_qr_codes():
    assert one("QR", npb.QR(Codes=["2@a", "2@b"])) == m.QrCode(ACCOUNT, ("2@a", "2@b"))


def test_undecryptable_message():
    event = npb.UndecryptableMessage(
        Info=info(dm(), msg_id="U1"), IsUnavailable=True, DecryptFailMode=npb.UndecryptableMessage.DECRYPT_FAIL_SHOW
    )
    assert one("UndecryptableMessage", event) == m.UndecryptableMessage(ACCOUNT, ALICE_PN, "U1", TS_MS, True)


# 16. unknown content ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        e2e.Message(callLogMesssage=e2e.CallLogMessage(isVideo=True, durationSecs=30)),
        e2e.Message(buttonsMessage=e2e.ButtonsMessage(contentText="pick one", contextInfo=ctx("Q5"))),
        e2e.Message(ephemeralMessage=e2e.FutureProofMessage()),  # a wrapper with nothing inside
    ],
    ids=["callLog", "buttons", "empty-wrapper"],
)
def test_unknown_content_is_other_never_raises(content):
    msg = live_one(content)
    assert isinstance(msg, m.Message) and msg.message_type is MessageType.OTHER
    assert msg.preview == "[other]" and msg.media_type is None
    assert history_one(content).message_type is MessageType.OTHER


def test_unknown_content_keeps_its_reply_context():
    content = e2e.Message(buttonsMessage=e2e.ButtonsMessage(contentText="pick", contextInfo=ctx("Q5")))
    assert live_one(content).quoted_message_id == "Q5"


# misc -----------------------------------------------------------------------------


def test_status_broadcast_and_id_less_messages_are_ignored():
    story = source(jid("status", "broadcast"), jid(ALICE))
    assert live_one(text("story"), story) == m.Ignored(ACCOUNT, reason="status_broadcast")
    assert live_one(text("x"), msg_id="") == m.Ignored(ACCOUNT, reason="message_without_id")


def test_jid_rendering_drops_device():
    assert nz.jid_str(jid(ALICE, device=12)) == ALICE_PN
    assert nz.jid_str(jid()) is None
    assert nz.bare_jid(f"{ALICE}:12@s.whatsapp.net") == ALICE_PN
    assert nz.bare_jid(f"{ALICE_LID}:3@lid") == ALICE_LID_JID
