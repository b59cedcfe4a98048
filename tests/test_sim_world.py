"""The simulator's pure half: world files (runtime/sim/world.py) and the neonize events
built from them (runtime/sim/protobufs.py).

Every built event is serialized (which raises if a proto2 required field is missing),
parsed back, and normalized from the bytes with the daemon's own normalizer, so these
tests see what the wire carries and what the mirror will store.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import re
from pathlib import Path

import pytest
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs

from wasync.runtime import model as m
from wasync.runtime.model import Direction, MessageStatus, MessageType, ProtocolKind
from wasync.runtime.sim import historysync
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim import world as w
from wasync.runtime.sim.state import HISTORY, LIVE, ChatState
from wasync.runtime.sim.world import Chat, WorldError, WorldMessage
from wasync.runtime.transport.normalize import normalize

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.json"
PHONE = "15550001111"
ME = f"{PHONE}@s.whatsapp.net"
ALICE = "15552223333@s.whatsapp.net"
BOB = "15554445555@s.whatsapp.net"
GROUP = "120363000000000001@g.us"
TS = 1_763_900_000
ID_RE = re.compile(r"3EB0[0-9A-F]{16}")


def base() -> dict:
    """A small valid world; tests break one field at a time."""
    return {
        "seed": 7,
        "accounts": [
            {"phone": PHONE, "pushName": "Shop A", "chats": [
                {"jid": ALICE, "name": "Alice", "messages": [
                    {"id": "A1", "ts": TS, "text": "hi"},
                    {"id": "A2", "fromMe": True, "ts": TS + 60, "type": "image", "caption": "menu", "status": "read"},
                ]},
                {"jid": GROUP, "name": "Team", "group": True, "messages": [
                    {"id": "G1", "sender": BOB, "ts": TS + 100, "text": "dinner at 8"},
                ]},
            ]},
            {"phone": "15550002222", "paired": False},
        ],
        "timeline": [
            {"at": 2.0, "account": PHONE, "event": "message", "chat": ALICE, "id": "L1", "text": "live"},
        ],
    }


def errors_of(data) -> list[str]:
    with pytest.raises(WorldError) as err:
        w.parse_world(data)
    assert str(err.value) == "\n".join(err.value.errors)
    return list(err.value.errors)


def broken(edit) -> list[str]:
    data = base()
    edit(data)
    return errors_of(data)


def msg0(d):
    return d["accounts"][0]["chats"][0]["messages"][0]


def chat0(d):
    return d["accounts"][0]["chats"][0]


def ev0(d):
    return d["timeline"][0]


# --- validation: every message names the JSON path ---------------------------------


def test_base_world_is_valid():
    world = w.parse_world(base())
    assert [a.phone for a in world.accounts] == [PHONE, "15550002222"]
    assert world.accounts[1].paired is False and world.accounts[1].chats == ()
    alice = world.accounts[0].chat(ALICE)
    assert alice.messages[1] == WorldMessage(
        id="A2", from_me=True, ts=TS + 60, type="image", caption="menu", mimetype="image/jpeg", status="read")
    assert alice.messages[0].status is None and alice.auto_receipts is True
    assert world.accounts[0].chat(GROUP).group is True
    assert world.accounts[0].jid == ME and world.account("nope") is None


@pytest.mark.parametrize("edit, path, says", [
    (lambda d: msg0(d).update(ts=1.5), "accounts[0].chats[0].messages[0].ts", "expected integer seconds"),
    (lambda d: msg0(d).update(ts="1763900000"), "accounts[0].chats[0].messages[0].ts", "expected integer seconds"),
    (lambda d: msg0(d).update(ts=TS * 1000), "accounts[0].chats[0].messages[0].ts", "milliseconds"),
    (lambda d: msg0(d).update(ts=-5), "accounts[0].chats[0].messages[0].ts", "seconds since the epoch"),
    (lambda d: msg0(d).pop("ts"), "accounts[0].chats[0].messages[0].ts", "required"),
    (lambda d: msg0(d).pop("id"), "accounts[0].chats[0].messages[0].id", "required"),
    (lambda d: msg0(d).update(id="has space"), "accounts[0].chats[0].messages[0].id", "message id"),
    (lambda d: msg0(d).update(type="gif"), "accounts[0].chats[0].messages[0].type", "expected one of text, image"),
    (lambda d: msg0(d).pop("text"), "accounts[0].chats[0].messages[0].text", "required"),
    (lambda d: msg0(d).update(text=5), "accounts[0].chats[0].messages[0].text", "expected a string"),
    (lambda d: msg0(d).update(fromMe="yes"), "accounts[0].chats[0].messages[0].fromMe", "true or false"),
    (lambda d: msg0(d).update(status="read"), "accounts[0].chats[0].messages[0].status", "only outbound"),
    (lambda d: chat0(d)["messages"][1].update(status="seen"), "accounts[0].chats[0].messages[1].status",
     "expected one of sent, delivered, read, played"),
    (lambda d: msg0(d).update(caption="x"), "accounts[0].chats[0].messages[0].caption", "not allowed on a text"),
    (lambda d: chat0(d)["messages"][1].update(filename="a.pdf"), "accounts[0].chats[0].messages[1].filename",
     "only document"),
    (lambda d: msg0(d).update(timestamp=TS), "accounts[0].chats[0].messages[0].timestamp", "unknown field"),
    (lambda d: msg0(d).update(sender=BOB), "accounts[0].chats[0].messages[0].sender", "1:1 chat"),
    (lambda d: chat0(d)["messages"][1].update(sender=ME), "accounts[0].chats[0].messages[1].sender",
     "leave sender out"),
    (lambda d: d["accounts"][0]["chats"][1]["messages"][0].pop("sender"),
     "accounts[0].chats[1].messages[0].sender", "required on inbound messages in a group"),
    (lambda d: d["accounts"][0]["chats"][1]["messages"][0].update(sender="bob"),
     "accounts[0].chats[1].messages[0].sender", "person's JID"),
    (lambda d: chat0(d)["messages"].append({"id": "A1", "ts": TS, "text": "again"}),
     "accounts[0].chats[0].messages[2].id", "duplicate message id 'A1'"),
    (lambda d: chat0(d)["messages"].append({"id": "R1", "ts": TS, "type": "reaction", "text": "x", "target": "ZZ"}),
     "accounts[0].chats[0].messages[2].target", "no message 'ZZ' in this chat"),
    (lambda d: chat0(d)["messages"].append({"id": "R1", "ts": TS, "type": "reaction", "text": "x"}),
     "accounts[0].chats[0].messages[2].target", "required"),
    (lambda d: chat0(d)["messages"].append({"id": "P1", "ts": TS, "type": "location", "latitude": 91}),
     "accounts[0].chats[0].messages[2].latitude", "-90 to 90"),
    (lambda d: chat0(d)["messages"].append("hi"), "accounts[0].chats[0].messages[2]", "expected an object"),
    (lambda d: chat0(d).update(messages={}), "accounts[0].chats[0].messages", "expected a list of objects"),
    (lambda d: chat0(d).update(jid="15552223333"), "accounts[0].chats[0].jid", "expected a JID"),
    (lambda d: chat0(d).update(jid="15552223333:4@s.whatsapp.net"), "accounts[0].chats[0].jid", "expected a JID"),
    (lambda d: chat0(d).update(jid="alice@s.whatsapp.net"), "accounts[0].chats[0].jid", "expected a JID"),
    (lambda d: chat0(d).update(group=True), "accounts[0].chats[0].group", "needs a @g.us JID"),
    (lambda d: d["accounts"][0]["chats"][1].update(group=False), "accounts[0].chats[1].group", "is a group's"),
    (lambda d: chat0(d).update(autoReceipts="no"), "accounts[0].chats[0].autoReceipts", "true or false"),
    (lambda d: d["accounts"][0]["chats"].append({"jid": ALICE}), "accounts[0].chats[2].jid", "duplicate chat"),
    (lambda d: d["accounts"][0].update(phone=15550001111), "accounts[0].phone", "string of digits"),
    (lambda d: d["accounts"][0].update(phone="+1 555"), "accounts[0].phone", "string of digits"),
    (lambda d: d["accounts"][1].update(phone=PHONE), "accounts[1].phone", "duplicate account"),
    (lambda d: d["accounts"][1].update(initialSyncPerChat=-1), "accounts[1].initialSyncPerChat", ">= 0"),
    (lambda d: d["accounts"][1].update(paired="false"), "accounts[1].paired", "true or false"),
    (lambda d: d["accounts"][1].update(generate=5), "accounts[1].generate", "expected an object"),
    (lambda d: d["accounts"][1].update(generate={"chats": 2}), "accounts[1].generate.messagesPerChat", "required"),
    (lambda d: d["accounts"][1].update(generate={"chats": 1.5, "messagesPerChat": 1}), "accounts[1].generate.chats",
     "integer"),
    (lambda d: d.update(seed="7"), "seed", "expected an integer"),
    (lambda d: d.update(seed=True), "seed", "expected an integer"),
    (lambda d: d.update(accounts=[]), "accounts", "at least one account"),
    (lambda d: d.pop("accounts"), "accounts", "expected a list of objects"),
    (lambda d: d.update(version=2), "version", "unknown field"),
])
def test_validation_error_names_the_path(edit, path, says):
    errors = broken(edit)
    assert any(e.startswith(f"{path}: ") and says in e for e in errors), errors


@pytest.mark.parametrize("edit, path, says", [
    (lambda d: ev0(d).update(at=-1), "timeline[0].at", "seconds >= 0"),
    (lambda d: ev0(d).pop("at"), "timeline[0].at", "required"),
    (lambda d: ev0(d).update(account="15559999999"), "timeline[0].account", "no account with phone 15559999999"),
    (lambda d: ev0(d).pop("account"), "timeline[0].account", "required"),
    (lambda d: ev0(d).update(event="explode"), "timeline[0].event", "expected one of message, receipt"),
    (lambda d: ev0(d).pop("event"), "timeline[0].event", "required"),
    (lambda d: ev0(d).pop("chat"), "timeline[0].chat", "required"),
    (lambda d: ev0(d).update(chat="alice"), "timeline[0].chat", "expected a JID"),
    (lambda d: ev0(d).update(id="A1"), "timeline[0].id", "duplicate message id 'A1'"),
    (lambda d: ev0(d).update(offline="lose"), "timeline[0].offline", "expected one of deliver, drop"),
    (lambda d: ev0(d).update(chat=GROUP), "timeline[0].sender", "required on inbound messages in a group"),
    (lambda d: ev0(d).update(ts=TS * 1000), "timeline[0].ts", "milliseconds"),
    (lambda d: ev0(d).update({"for": 3}), "timeline[0].for", "unknown field"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "receipt", "chat": ALICE, "ids": ["A2"],
                                     "type": "seen"}), "timeline[1].type", "expected one of delivered, read, played"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "receipt", "chat": ALICE, "ids": []}),
     "timeline[1].ids", "non-empty list"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "receipt", "chat": ALICE,
                                     "ids": ["A2", "A1"], "type": "read"}), "timeline[1].ids[1]", "'A1' is inbound"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "receipt", "chat": ALICE,
                                     "ids": ["L1"], "type": "read"}), "timeline[1].ids[0]", "'L1' is inbound"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "disconnect"}), "timeline[1].for", "required"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "disconnect", "for": 0}), "timeline[1].for",
     "> 0"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "degrade", "for": 5, "healsOn": "reboot"}),
     "timeline[1].healsOn", "expected one of restart, repair"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "logout", "reason": "BYE"}),
     "timeline[1].reason", "LOGGED_OUT"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "ban", "for": 60, "code": "SPAM"}),
     "timeline[1].code", "SENT_TOO_MANY_SAME_MESSAGE"),
    (lambda d: d["timeline"].append({"at": 1, "account": PHONE, "event": "traffic", "for": 60}),
     "timeline[1].rate", "required"),
    (lambda d: d["timeline"].append({"at": 1, "account": "15550002222", "event": "traffic", "rate": 1, "for": 5}),
     "timeline[1].account", "at least one chat"),
    (lambda d: d["timeline"].append(7), "timeline[1]", "expected an object"),
    (lambda d: d.update(timeline={}), "timeline", "expected a list of objects"),
])
def test_timeline_validation_names_the_path(edit, path, says):
    errors = broken(edit)
    assert any(e.startswith(f"{path}: ") and says in e for e in errors), errors


def test_all_problems_are_reported_together():
    data = base()
    msg0(data).update(ts=1.5, type="gif")
    data["accounts"][1]["phone"] = "x"
    ev0(data)["at"] = "soon"
    errors = errors_of(data)
    assert [e.split(":")[0] for e in errors] == [
        "accounts[0].chats[0].messages[0].type", "accounts[0].chats[0].messages[0].ts",
        "accounts[1].phone", "timeline[0].at"]


def test_an_account_with_errors_is_still_known_to_the_timeline():
    data = base()
    data["accounts"][1]["initialSyncPerChat"] = "many"
    data["timeline"].append({"at": 1, "account": "15550002222", "event": "logout"})
    assert errors_of(data) == ["accounts[1].initialSyncPerChat: expected an integer >= 0, got \"many\""]


def test_root_must_be_an_object_and_load_reports_bad_json(tmp_path):
    assert errors_of([1, 2]) == ["(root): expected a JSON object with seed, accounts and timeline"]
    bad = tmp_path / "w.json"
    bad.write_text('{"seed": 1,,}')
    with pytest.raises(WorldError, match=r"not JSON: .* line 1 column 12"):
        w.load_world(bad)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(base()))
    assert w.load_world(good) == w.parse_world(base())


def test_messages_are_sorted_by_time_and_defaults_filled():
    data = base()
    chat0(data)["messages"].insert(0, {"id": "A0", "fromMe": True, "ts": TS + 500, "type": "audio"})
    messages = w.parse_world(data).accounts[0].chat(ALICE).messages
    assert [x.id for x in messages] == ["A1", "A2", "A0"]
    assert (messages[2].mimetype, messages[2].status) == ("audio/ogg; codecs=opus", "sent")


def test_reaction_target_direction_is_resolved():
    data = base()
    chat0(data)["messages"].append({"id": "R1", "ts": TS + 90, "type": "reaction", "text": "👍", "target": "A2"})
    reaction = w.parse_world(data).accounts[0].chat(ALICE).messages[-1]
    assert (reaction.target, reaction.target_from_me, reaction.text) == ("A2", True, "👍")


def test_reason_and_ban_names_match_neonize():
    assert w.LOGOUT_REASONS == tuple(npb.ConnectFailureReason.keys())
    assert w.BAN_CODES == tuple(npb.TemporaryBan.TempBanReason.keys())


# --- timeline ------------------------------------------------------------------------


def full_timeline() -> dict:
    data = base()
    data["timeline"] = [
        {"at": 40, "account": PHONE, "event": "traffic", "rate": 5.0, "for": 60},
        {"at": 2, "account": PHONE, "event": "message", "chat": ALICE, "id": "L1", "text": "live"},
        {"at": 2.5, "account": PHONE, "event": "message", "chat": GROUP, "sender": BOB, "type": "image",
         "offline": "drop"},
        {"at": 3, "account": PHONE, "event": "receipt", "chat": ALICE, "ids": ["A2"], "type": "played"},
        {"at": 5, "account": PHONE, "event": "disconnect", "for": 10},
        {"at": 20, "account": PHONE, "event": "degrade", "for": 600},
        {"at": 21, "account": PHONE, "event": "degrade", "for": 5, "healsOn": "repair"},
        {"at": 30, "account": PHONE, "event": "logout"},
        {"at": 31, "account": PHONE, "event": "logout", "reason": "MAIN_DEVICE_GONE"},
        {"at": 35, "account": "15550002222", "event": "ban", "for": 3600},
        {"at": 36, "account": PHONE, "event": "message", "chat": ALICE, "fromMe": True, "text": "out",
         "ts": TS + 9000},
        {"at": 37, "account": PHONE, "event": "message", "chat": ALICE, "type": "reaction", "text": "❤️",
         "target": "A2"},
    ]
    return data


def test_every_timeline_event_kind_parses_sorted_by_at():
    events = w.parse_world(full_timeline()).timeline
    E = w.TimelineEvent
    assert [e.at for e in events] == sorted(e.at for e in events) and events[-1].event == "traffic"
    by_at = {e.at: e for e in events}
    assert by_at[2.0] == E(2.0, PHONE, "message", chat=ALICE, message=WorldMessage(id="L1", text="live"))
    dropped = by_at[2.5]
    assert (dropped.offline, dropped.message.sender, dropped.message.type) == ("drop", BOB, "image")
    assert ID_RE.fullmatch(dropped.message.id)  # no id in the file: a WhatsApp-style one
    assert by_at[3.0] == E(3.0, PHONE, "receipt", chat=ALICE, ids=("A2",), receipt_type="played")
    assert by_at[5.0] == E(5.0, PHONE, "disconnect", duration=10.0)
    assert by_at[20.0] == E(20.0, PHONE, "degrade", duration=600.0, heals_on="restart")
    assert by_at[21.0].heals_on == "repair"
    assert by_at[30.0] == E(30.0, PHONE, "logout", reason="LOGGED_OUT")
    assert by_at[31.0].reason == "MAIN_DEVICE_GONE"
    assert by_at[35.0] == E(35.0, "15550002222", "ban", duration=3600.0, code="SENT_TOO_MANY_SAME_MESSAGE")
    assert by_at[36.0].message.from_me and by_at[36.0].message.status == "sent" and by_at[36.0].message.ts == TS + 9000
    assert (by_at[37.0].message.target, by_at[37.0].message.target_from_me) == ("A2", True)
    assert by_at[40.0] == E(40.0, PHONE, "traffic", rate=5.0, duration=60.0)


def test_timeline_ids_for_id_less_messages_are_deterministic():
    a, b = w.parse_world(full_timeline()), w.parse_world(full_timeline())
    assert a.timeline == b.timeline
    other = full_timeline()
    other["seed"] = 8
    assert w.parse_world(other).timeline[1].message.id != a.timeline[1].message.id


def test_parse_events_for_injection():
    world = w.parse_world(base())
    one = w.parse_events({"account": PHONE, "event": "disconnect", "for": 3}, world)
    assert one == (w.TimelineEvent(0.0, PHONE, "disconnect", duration=3.0),)
    many = w.parse_events([{"account": PHONE, "event": "message", "chat": ALICE, "text": "x"},
                           {"account": PHONE, "event": "receipt", "chat": ALICE, "ids": ["A2"], "type": "read"}],
                          world, rng=random.Random(1))
    assert [e.event for e in many] == ["message", "receipt"] and ID_RE.fullmatch(many[0].message.id)
    with pytest.raises(WorldError) as err:
        w.parse_events([{"account": "999999", "event": "logout"}, {"account": PHONE, "event": "receipt",
                        "chat": ALICE, "ids": ["A1"], "type": "read"}], world)
    assert err.value.errors == ("events[0].account: no account with phone 999999 in this world",
                                "events[1].ids[0]: 'A1' is inbound; receipts are for outbound messages")


# --- generation ----------------------------------------------------------------------


def generated(seed=7, chats=12, per_chat=60, phone=PHONE) -> tuple[Chat, ...]:
    return w.generate_chats(seed, phone, w.Generate(chats, per_chat))


def test_generate_is_deterministic_per_seed_and_phone():
    assert generated() == generated()
    assert generated(seed=8) != generated()
    assert generated(phone="15550002222") != generated()
    data = base()
    data["accounts"][0]["generate"] = {"chats": 3, "messagesPerChat": 10}
    one, two = w.parse_world(data), w.parse_world(copy.deepcopy(data))
    assert one == two and len(one.accounts[0].chats) == 2 + 3
    assert one.accounts[0].chats[2:] == w.generate_chats(7, PHONE, w.Generate(3, 10), {ALICE, GROUP, ME})


def test_generated_ids_and_times():
    chats = generated()
    reference = w.reference_time(7)
    assert reference == w.reference_time(7) != w.reference_time(8)
    assert 1_735_689_600 <= reference < 1_735_689_600 + 270 * 86400
    for chat in chats:
        ids = [x.id for x in chat.messages]
        assert len(ids) == 60 and len(set(ids)) == 60 and all(ID_RE.fullmatch(i) for i in ids)
        times = [x.ts for x in chat.messages]
        assert times == sorted(set(times))  # strictly increasing
        assert reference - w.HISTORY_SPAN_S <= times[0] and times[-1] <= reference + 60
    assert ID_RE.fullmatch(w.new_message_id(random.Random(0)))


def test_generated_content_is_mixed_and_well_formed():
    chats = generated(chats=20, per_chat=100)
    messages = [x for c in chats for x in c.messages]
    assert len({c.jid for c in chats}) == 20
    assert {x.type for x in messages} == set(w.MESSAGE_TYPES)
    assert 0.25 < sum(x.from_me for x in messages) / len(messages) < 0.55
    groups = [c for c in chats if c.group]
    assert groups and all(c.jid.endswith("@g.us") for c in groups)
    for chat in chats:
        by_id = {x.id: x for x in chat.messages}
        for x in chat.messages:
            assert (x.status is not None) == x.from_me
            assert (x.sender is not None) == (chat.group and not x.from_me)
            if x.type == "reaction":
                assert by_id[x.target].from_me == x.target_from_me
    # The generated chats pass the same validation as hand-written ones.
    as_json = {"accounts": [{"phone": PHONE, "chats": [chat_json(c) for c in chats]}]}
    assert w.parse_world(as_json).accounts[0].chats == chats


def chat_json(chat: Chat) -> dict:
    names = {"from_me": "fromMe", "push_name": "pushName"}
    skip = {"target_from_me"}
    messages = [{names.get(k, k): v for k, v in dataclasses.asdict(x).items()
                 if v is not None and k not in skip and not (k == "from_me" and not v)} for x in chat.messages]
    for x, raw in zip(chat.messages, messages):
        if x.type not in w.MEDIA_TYPES:
            raw.pop("mimetype", None)
    return {"jid": chat.jid, "name": chat.name, "messages": messages}


def test_generated_jids_avoid_taken_ones():
    first = generated(chats=1, per_chat=1)[0].jid
    assert generated(chats=1, per_chat=1)[0].jid == first
    assert first not in {c.jid for c in w.generate_chats(7, PHONE, w.Generate(5, 1), {first})}


def test_demo_world_is_valid():
    world = w.load_world(DEMO)
    assert len(world.accounts) == 3 and [a.paired for a in world.accounts].count(False) == 1
    assert sum(a.generate is not None for a in world.accounts) == 1
    kinds = {e.event for e in world.timeline}
    assert {"message", "receipt", "disconnect", "degrade", "traffic"} <= kinds
    assert any(e.offline == "drop" for e in world.timeline)
    assert any(c.group for a in world.accounts for c in a.chats)
    types = {x.type for a in world.accounts for c in a.chats for x in c.messages}
    assert {"image", "video", "audio", "document", "sticker", "location", "contact", "reaction"} <= types


# --- protobuf builders -> normalize() --------------------------------------------------

ACCOUNT = "acct-1"


def roundtrip(event):
    """Serialize (raises on a missing required field), parse back, normalize the bytes."""
    assert event.IsInitialized()
    kind, raw = pb.wire(event)
    assert type(event).FromString(raw) == event
    [result] = normalize(ACCOUNT, kind, raw)
    return result


def wm(**kw) -> WorldMessage:
    return WorldMessage(**{"id": "3EB0AAAAAAAAAAAAAAAA", "ts": TS, **kw})


@pytest.mark.parametrize("msg, kind, body, caption, mimetype, filename", [
    (wm(text="hello"), MessageType.TEXT, "hello", None, None, None),
    (wm(type="image", caption="menu", mimetype="image/png"), MessageType.IMAGE, None, "menu", "image/png", None),
    (wm(type="video", mimetype="video/mp4"), MessageType.VIDEO, None, None, "video/mp4", None),
    (wm(type="audio"), MessageType.AUDIO, None, None, "audio/ogg; codecs=opus", None),
    (wm(type="document", filename="a.pdf", caption="March"), MessageType.DOCUMENT, None, "March", "application/pdf",
     "a.pdf"),
    (wm(type="sticker"), MessageType.STICKER, None, None, "image/webp", None),
    (wm(type="location", text="Harbour Cafe", latitude=1.5, longitude=2.25), MessageType.LOCATION, "Harbour Cafe",
     None, None, None),
    (wm(type="location", latitude=1.5, longitude=2.25), MessageType.LOCATION, "1.5,2.25", None, None, None),
    (wm(type="contact", text="Carol"), MessageType.CONTACT, "Carol", None, None, None),
    (wm(type="reaction", text="👍", target="T1"), MessageType.REACTION, "👍", None, None, None),
], ids=lambda v: v.type if isinstance(v, WorldMessage) else None)
def test_every_message_type_live_and_history(msg, kind, body, caption, mimetype, filename):
    live = roundtrip(pb.message_event(PHONE, ALICE, msg))
    [hist] = roundtrip(pb.history_sync_event(PHONE, "RECENT", [(Chat(ALICE), [msg])])).messages
    for got in (live, hist):
        assert (got.message_type, got.body, got.caption, got.media_mimetype, got.media_filename) == (
            kind, body, caption, mimetype, filename)
        assert got.media_type == (kind.value if kind in m.MEDIA_TYPES else None)
        assert (got.media_url is not None) == (kind in m.MEDIA_TYPES)
        assert got.quoted_message_id == ("T1" if kind is MessageType.REACTION else None)
    assert dataclasses.replace(live, sync_source=m.SyncSource.HISTORY_SYNC) == hist


def test_live_message_direction_sender_and_millisecond_time():
    inbound = roundtrip(pb.message_event(PHONE, ALICE, wm(text="in", push_name="Alice")))
    assert (inbound.direction, inbound.client_jid, inbound.sender_jid, inbound.push_name) == (
        Direction.INBOUND, ALICE, ALICE, "Alice")
    assert (inbound.ts_client_ms, inbound.sync_source, inbound.is_group) == (TS * 1000, m.SyncSource.REALTIME, False)
    out = roundtrip(pb.message_event(PHONE, ALICE, wm(text="out", from_me=True), push_name="Shop A"))
    assert (out.direction, out.sender_jid, out.status, out.push_name) == (
        Direction.OUTBOUND, None, MessageStatus.SENT, "Shop A")
    precise = roundtrip(pb.message_event(PHONE, ALICE, wm(text="x", ts=None), ts_ms=TS * 1000 + 123))
    assert precise.ts_client_ms == TS * 1000 + 123
    with pytest.raises(ValueError, match="no ts"):
        pb.message_event(PHONE, ALICE, wm(text="x", ts=None))


def test_live_group_message_names_participant_or_self():
    inbound = roundtrip(pb.message_event(PHONE, GROUP, wm(text="hi all", sender=BOB, push_name="Bob")))
    assert (inbound.client_jid, inbound.sender_jid, inbound.is_group, inbound.push_name) == (GROUP, BOB, True, "Bob")
    outbound = roundtrip(pb.message_event(PHONE, GROUP, wm(text="me too", from_me=True)))
    assert (outbound.direction, outbound.sender_jid, outbound.is_group) == (Direction.OUTBOUND, ME, True)


def test_history_batch_contents_statuses_and_units():
    alice, team = Chat(ALICE, "Alice"), Chat(GROUP, "Team", group=True)
    alice_msgs = [wm(id="H1", text="one", push_name="Ali"),
                  wm(id="H2", ts=TS + 60, from_me=True, text="two", status="delivered"),
                  wm(id="H3", ts=TS + 120, from_me=True, type="audio", status="played")]
    team_msgs = [wm(id="G1", text="hey", sender=BOB), wm(id="G2", ts=TS + 5, text="yo", from_me=True, status="read")]
    event = pb.history_sync_event(PHONE, "INITIAL_BOOTSTRAP", [(alice, alice_msgs), (team, team_msgs)],
                                  chunk_order=2, progress=40)
    conv = event.Data.conversations[0]
    assert [x.message.key.ID for x in conv.messages] == ["H3", "H2", "H1"]  # newest first, as WhatsApp sends
    assert conv.lastMsgTimestamp == TS + 120
    batch = roundtrip(event)
    assert (batch.sync_type, batch.chunk_order, batch.progress, batch.skipped) == (
        m.HistorySyncType.INITIAL_BOOTSTRAP, 2, 40, 0)
    got = {x.id: x for x in batch.messages}
    assert (got["H1"].direction, got["H1"].status, got["H1"].ts_client_ms, got["H1"].push_name) == (
        Direction.INBOUND, None, TS * 1000, "Ali")
    assert [got[i].status for i in ("H2", "H3", "G2")] == [MessageStatus.DELIVERED, MessageStatus.PLAYED,
                                                          MessageStatus.READ]
    assert (got["G1"].sender_jid, got["G1"].is_group, got["G2"].sender_jid) == (BOB, True, ME)
    assert batch.threads == (m.ThreadUpdate(ACCOUNT, ALICE, display_name="Alice", is_group=False),
                             m.ThreadUpdate(ACCOUNT, GROUP, display_name="Team", is_group=True))
    assert roundtrip(pb.history_sync_event(PHONE, "ON_DEMAND", [])).progress is None
    assert roundtrip(pb.history_sync_event(PHONE, "ON_DEMAND", [])).sync_type is m.HistorySyncType.ON_DEMAND
    assert roundtrip(pb.history_sync_event(PHONE, "RECENT", [(alice, [])])).sync_type is m.HistorySyncType.RECENT


def test_end_of_history_type_names_match_neonize():
    names = set(hs.Conversation.EndOfHistoryTransferType.keys())
    assert {historysync.MORE_ON_PRIMARY, historysync.NO_MORE_ON_PRIMARY, historysync.ON_DEMAND_MORE_ON_PRIMARY} <= names


@pytest.mark.parametrize("end, complete", [(historysync.NO_MORE_ON_PRIMARY, True),
                                           (historysync.MORE_ON_PRIMARY, None),
                                           (historysync.ON_DEMAND_MORE_ON_PRIMARY, None)])
def test_a_conversation_that_ends_its_transfer_says_how(end, complete):
    alice, team = Chat(ALICE, "Alice"), Chat(GROUP, "Team", group=True)
    event = pb.history_sync_event(PHONE, "ON_DEMAND", [historysync.Conversation(alice, [wm(text="x")], end),
                                                       (team, [wm(id="G1", text="y", sender=BOB)])])
    ends, goes_on = event.Data.conversations
    assert ends.endOfHistoryTransfer is True
    assert ends.endOfHistoryTransferType == hs.Conversation.EndOfHistoryTransferType.Value(end)
    assert not goes_on.HasField("endOfHistoryTransfer") and not goes_on.HasField("endOfHistoryTransferType")
    batch = roundtrip(event)
    assert [t.history_complete for t in batch.threads] == [complete, None]
    assert {x.sync_source for x in batch.messages} == {m.SyncSource.BACKFILL}  # answers to our own requests


def _chat_state() -> ChatState:
    """M0..M5 of time-0 history, then a live message L1 (oldest first)."""
    chat = ChatState(ALICE, initial=tuple(wm(id=f"M{i}", ts=TS + i, text=str(i)) for i in range(6)))
    chat.add(wm(id="L1", ts=TS + 100, text="live"), LIVE, (TS + 100) * 1000)
    return chat


@pytest.mark.parametrize("read, anchor, count, ids", [
    ("older_than", "M3", 2, ["M1", "M2"]),
    ("older_than", "M3", 50, ["M0", "M1", "M2"]),
    ("older_than", "M0", 10, []),
    ("older_than", "L1", 1, ["M5"]),
    ("older_than", "NOPE", 10, None),
    ("newer_than", "M3", 2, ["M4", "M5"]),
    ("newer_than", "M3", 50, ["M4", "M5", "L1"]),  # every message the phone holds, live ones too
    ("newer_than", "L1", 10, []),
    ("newer_than", "NOPE", 10, None),
])
def test_chat_state_reads_history_either_way_from_an_anchor(read, anchor, count, ids):
    found = getattr(_chat_state(), read)(anchor, count)
    assert (None if found is None else [x.id for x in found]) == ids


def test_chat_state_knows_its_first_message():
    chat = _chat_state()
    assert chat.is_first("M0") and not chat.is_first("M1") and not chat.is_first("NOPE")
    assert chat.records[0].via == HISTORY
    assert not ChatState(ALICE).is_first("M0")


def test_every_world_message_gives_the_same_record_live_and_in_history():
    world = w.load_world(DEMO)
    for account in world.accounts:
        for chat in account.chats:
            batch = roundtrip(pb.history_sync_event(account.phone, "RECENT", [(chat, chat.messages)]))
            history = {x.id: x for x in batch.messages}
            assert len(history) == len(chat.messages) and batch.skipped == 0
            for msg in chat.messages:
                live = roundtrip(pb.message_event(account.phone, chat.jid, msg))
                expected = dataclasses.replace(live, sync_source=m.SyncSource.HISTORY_SYNC,
                                               status=history[msg.id].status)
                assert history[msg.id] == expected
                assert (history[msg.id].status.value if msg.from_me else None) == msg.status


def test_receipts_are_seconds_and_name_the_reader():
    for kind in ("delivered", "read", "played"):
        receipt = roundtrip(pb.receipt_event(PHONE, ALICE, ["A2", "A3"], kind, TS))
        assert receipt == m.Receipt(ACCOUNT, ALICE, ("A2", "A3"), m.ReceiptKind(kind), TS * 1000, sender_jid=ALICE)
        assert receipt.status is MessageStatus(kind)
    group = roundtrip(pb.receipt_event(PHONE, GROUP, ["G2"], "read", TS, reader_jid=BOB))
    assert (group.client_jid, group.sender_jid, group.kind) == (GROUP, BOB, m.ReceiptKind.READ)


def test_protocol_messages_are_classified_not_stored():
    note = roundtrip(pb.history_sync_notification_event(PHONE, "3EB0N1", TS * 1000, sync_type="INITIAL_BOOTSTRAP",
                                                        chunk_order=1, progress=10))
    assert note == m.ProtocolMessage(ACCOUNT, ME, "3EB0N1", ProtocolKind.HISTORY_SYNC_NOTIFICATION, TS * 1000)
    raw = pb.history_sync_notification_event(PHONE, "3EB0N2", 1, sync_type="RECENT", chunk_order=3)
    hsn = raw.Message.protocolMessage.historySyncNotification
    assert (hsn.chunkOrder, hsn.HasField("progress"), raw.Info.Category) == (3, False, "peer")
    share = roundtrip(pb.app_state_key_share_event(PHONE, "3EB0K1", TS * 1000, key_count=2))
    assert (share.kind, share.client_jid, share.ts_ms) == (ProtocolKind.APP_STATE_SYNC_KEY_SHARE, ME, TS * 1000)
    pm = pb.e2e.ProtocolMessage(type=pb.e2e.ProtocolMessage.INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC)
    assert roundtrip(pb.protocol_event(PHONE, "3EB0P1", 5, pm)).kind is ProtocolKind.INITIAL_SECURITY_NOTIFICATION


def test_session_events():
    assert roundtrip(pb.connected_event()) == m.Connected(ACCOUNT)
    assert roundtrip(pb.disconnected_event()) == m.Disconnected(ACCOUNT)
    assert roundtrip(pb.stream_replaced_event()) == m.StreamReplaced(ACCOUNT)
    assert roundtrip(pb.keepalive_restored_event()) == m.KeepAliveRestored(ACCOUNT)
    assert roundtrip(pb.keepalive_timeout_event(3, TS)) == m.KeepAliveTimeout(ACCOUNT, 3, TS * 1000)
    assert roundtrip(pb.offline_sync_completed_event(17)) == m.OfflineSyncCompleted(ACCOUNT, 17)
    assert roundtrip(pb.qr_event(["2@a", "2@b"])) == m.QrCode(ACCOUNT, ("2@a", "2@b"))
    assert roundtrip(pb.temporary_ban_event("BROADCAST_LIST", 3600.7)) == m.TemporaryBan(ACCOUNT, "BROADCAST_LIST", 3600)


@pytest.mark.parametrize("reason", w.LOGOUT_REASONS)
def test_logged_out_every_reason(reason):
    assert roundtrip(pb.logged_out_event(reason)) == m.LoggedOut(ACCOUNT, reason=reason, on_connect=False)


def test_pair_status():
    ok = pb.pair_status_event(True, f"{PHONE}:12@s.whatsapp.net", business_name="Shop A")
    assert (ok.ID.User, ok.ID.Device, ok.ID.IsEmpty) == (PHONE, 12, False)
    assert roundtrip(ok) == m.PairSuccess(ACCOUNT, ME, "Shop A", "android")
    assert roundtrip(pb.pair_status_event(False, error="qr expired")) == m.PairFailure(ACCOUNT, "qr expired")


def test_jid_helper():
    assert pb.pb_jid(GROUP) == npb.JID(User="120363000000000001", RawAgent=0, Device=0, Integrator=0,
                                       Server="g.us", IsEmpty=False)
    empty = pb.pb_jid()
    assert empty.IsEmpty and empty.IsInitialized()
    assert pb.own_jid(PHONE) == ME
