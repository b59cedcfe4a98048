"""The simulator's world file (docs/simulator.md): parsing and validation.

Types live in worldmodel.py, deterministic generation in generate.py.

Pure: no I/O but `load_world` reading the file, no wall clock, no neonize import, so the
service, the benchmarks and the tests see the same ground truth for one file.

- All problems are collected and raised together as one `WorldError`, one line each,
  each starting with the JSON path of the bad field (`accounts[2].chats[0].messages[5].ts:
  ...`): a hand-written world usually has several mistakes, and one run per typo is slow.
- Unknown fields are errors: a misspelt `timestamp` for `ts` would otherwise vanish.
- Timestamps are integer seconds; a value that looks like milliseconds is rejected.
- `generate` depends only on (seed, phone): `random.Random` seeded from a sha256 of both
  (never `hash()`, salted per process), with times counting back from a reference instant
  derived from the seed, never from the wall clock.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

# The generator and the vocabulary are re-exported: callers need only this module.
from wasync.runtime.sim.generate import generate_chats, new_message_id, reference_time, stable_seed  # noqa: F401
from wasync.runtime.sim.worldmodel import (  # noqa: F401
    BAN_CODES, CAPTIONED_TYPES, DEFAULT_MIMETYPES, EVENT_KINDS, HEALS_ON, HISTORY_SPAN_S, LOGOUT_REASONS,
    MAX_ERRORS, MEDIA_TYPES, MESSAGE_TYPES, OFFLINE_MODES, RECEIPT_TYPES, STATUSES, Account, Chat, Generate,
    TimelineEvent, World, WorldError, WorldMessage,
)

class _Bad(Exception):
    pass


def _check(ok: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v):
    def check(value: Any) -> Any:
        if not ok(value):
            raise _Bad(f"{expected}, got {json.dumps(value, ensure_ascii=False, default=repr)[:60]}")
        return convert(value)

    return check


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not 1 here


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _enum(values: tuple[str, ...]):
    return _check(lambda v: isinstance(v, str) and v in values, f"expected one of {', '.join(values)}")


def _seconds(v: Any) -> int:
    if not _is_int(v):
        raise _Bad("expected integer seconds")
    if not 0 <= v < 10**11:  # 10**11 s is the year 5138: surely milliseconds
        raise _Bad(f"expected integer seconds since the epoch, got {v}" + (" (milliseconds?)" if v > 0 else ""))
    return v


def _ids(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise _Bad("expected a non-empty list of message ids")
    return tuple(_MSG_ID(x) for x in v)


_USER_JID, _GROUP_JID = re.compile(r"\d{5,20}@s\.whatsapp\.net"), re.compile(r"\d{5,25}(-\d{5,15})?@g\.us")
_BOOL = _check(lambda v: isinstance(v, bool), "expected true or false")
_STR = _check(lambda v: isinstance(v, str), "expected a string")
_INT = _check(_is_int, "expected an integer")
_COUNT = _check(lambda v: _is_int(v) and v >= 0, "expected an integer >= 0")
_AT = _check(lambda v: _is_num(v) and v >= 0, "expected seconds >= 0", float)
_POSITIVE = _check(lambda v: _is_num(v) and v > 0, "expected a number > 0", float)
_LATITUDE = _check(lambda v: _is_num(v) and -90 <= v <= 90, "expected degrees from -90 to 90", float)
_LONGITUDE = _check(lambda v: _is_num(v) and -180 <= v <= 180, "expected degrees from -180 to 180", float)
_MSG_ID = _check(lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]{1,128}", v) is not None,
                 "expected a message id (letters, digits, - _ .)")
_PHONES = _check(lambda v: isinstance(v, list) and all(isinstance(x, str) and re.fullmatch(r"\d{5,20}", x) for x in v),
                 "expected a list of phone numbers (5-20 digits)", tuple)
_PHONE = _check(lambda v: isinstance(v, str) and re.fullmatch(r"\d{5,20}", v) is not None,
                'expected the phone number as a string of digits, like "15550001111"')
_JID = _check(lambda v: isinstance(v, str) and bool(_USER_JID.fullmatch(v) or _GROUP_JID.fullmatch(v)),
              "expected a JID like 15551234567@s.whatsapp.net or 120363000000000001@g.us")
_USER = _check(lambda v: isinstance(v, str) and _USER_JID.fullmatch(v) is not None,
               "expected a person's JID like 15551234567@s.whatsapp.net")


# --- reading JSON objects while collecting problems ------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Problems(list):
    def add(self, path: str, message: str) -> None:
        if len(self) < MAX_ERRORS:
            self.append(f"{path or '(root)'}: {message}")


class _Obj:
    """One JSON object at `path`: typed access that records problems instead of raising,
    so that one pass reports everything wrong in the file."""

    def __init__(self, data: dict, path: str, problems: _Problems, allowed: set[str]):
        self.data, self.path, self.problems = data, path, problems
        for key in data:
            if key not in allowed:
                problems.add(_at(path, key), f"unknown field (known: {', '.join(sorted(allowed))})")

    def get(self, key: str, check: Callable[[Any], Any], default: Any = None, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                self.bad(key, "required")
            return default
        try:
            return check(self.data[key])
        except _Bad as exc:
            self.bad(key, str(exc))
            return default

    def bad(self, key: str, message: str) -> None:
        self.problems.add(_at(self.path, key), message)

    def objects(self, key: str, required: bool = False) -> list[tuple[str, dict]]:
        return _objects(self.data.get(key), _at(self.path, key), self.problems, required or key in self.data)


def _objects(value: Any, path: str, problems: _Problems, required: bool) -> list[tuple[str, dict]]:
    """(path, object) of each item of a list of objects; problems for anything else."""
    if value is None and not required:
        return []
    if not isinstance(value, list):
        problems.add(path, "expected a list of objects")
        return []
    for i in (i for i, item in enumerate(value) if not isinstance(item, dict)):
        problems.add(f"{path}[{i}]", "expected an object")
    return [(f"{path}[{i}]", item) for i, item in enumerate(value) if isinstance(item, dict)]


# --- messages, chats, accounts ---------------------------------------------------------

MESSAGE_FIELDS = {"id", "fromMe", "ts", "type", "text", "caption", "mimetype", "filename", "sender", "status",
                  "pushName", "target", "latitude", "longitude"}
# Which message types may carry each optional field.
_ONLY_ON = {"caption": CAPTIONED_TYPES, "mimetype": MEDIA_TYPES, "filename": {"document"},
            "target": {"reaction"}, "latitude": {"location"}, "longitude": {"location"}}


def _message(obj: _Obj, chat: Optional[str], *, live: bool, new_id: Optional[str] = None) -> Optional[WorldMessage]:
    """A chat's message, or a timeline message (where `ts` and `id` may be left out);
    None if anything about it is wrong."""
    before = len(obj.problems)
    mtype, from_me = obj.get("type", _enum(MESSAGE_TYPES), "text"), obj.get("fromMe", _BOOL, False)
    msg = WorldMessage(
        id=obj.get("id", _MSG_ID, new_id, required=new_id is None),
        from_me=from_me,
        ts=obj.get("ts", _seconds, required=not live),
        type=mtype,
        text=obj.get("text", _STR, required=mtype in ("text", "reaction")),
        caption=obj.get("caption", _STR),
        mimetype=obj.get("mimetype", _STR, DEFAULT_MIMETYPES.get(mtype)),
        filename=obj.get("filename", _STR),
        sender=obj.get("sender", _USER),
        status=obj.get("status", _enum(STATUSES), "sent" if from_me else None),
        push_name=obj.get("pushName", _STR),
        target=obj.get("target", _MSG_ID, required=mtype == "reaction"),
        latitude=obj.get("latitude", _LATITUDE),
        longitude=obj.get("longitude", _LONGITUDE),
    )
    for key in obj.data.keys() & _ONLY_ON.keys():
        if mtype not in _ONLY_ON[key]:
            obj.bad(key, f"not allowed on a {mtype} message (only {', '.join(sorted(_ONLY_ON[key]))})")
    if "status" in obj.data and not from_me:
        obj.bad("status", "only outbound (fromMe) messages have a status")
    group = bool(chat and chat.endswith("@g.us"))
    if group and not from_me and "sender" not in obj.data:
        obj.bad("sender", "required on inbound messages in a group chat")
    elif from_me and "sender" in obj.data:
        obj.bad("sender", "outbound messages are sent by the account itself; leave sender out")
    elif chat and not group and msg.sender not in (None, chat):
        obj.bad("sender", "in a 1:1 chat the sender is the chat's JID")
    return msg if len(obj.problems) == before else None


def _resolve_reaction(path: str, msg: WorldMessage, known: dict[str, WorldMessage],
                      problems: Optional[_Problems]) -> WorldMessage:
    """A reaction's key says whether the reacted message was ours. History reactions
    must point into their chat; live ones may name a message a client sends later."""
    if msg.type != "reaction":
        return msg
    target = known.get(msg.target or "")
    if target is None and problems is not None:
        problems.add(f"{path}.target", f"no message {msg.target!r} in this chat")
    return replace(msg, target_from_me=target.from_me) if target else msg


def _chat(data: dict, path: str, problems: _Problems) -> Optional[Chat]:
    before = len(problems)
    obj = _Obj(data, path, problems, {"jid", "name", "group", "autoReceipts", "messages"})
    jid, name, auto = obj.get("jid", _JID, required=True), obj.get("name", _STR), obj.get("autoReceipts", _BOOL, True)
    is_group = bool(jid and jid.endswith("@g.us"))
    group = obj.get("group", _BOOL, is_group)
    if jid and group != is_group:
        obj.bad("group", "true needs a @g.us JID" if group else "false, but the JID is a group's (@g.us)")
    parsed: dict[str, tuple[str, WorldMessage]] = {}
    for mpath, mdata in obj.objects("messages"):
        msg = _message(_Obj(mdata, mpath, problems, MESSAGE_FIELDS), jid, live=False)
        if msg and msg.id in parsed:
            problems.add(f"{mpath}.id", f"duplicate message id {msg.id!r} in this chat")
        elif msg:
            parsed[msg.id] = (mpath, msg)
    by_id = {mid: msg for mid, (_, msg) in parsed.items()}
    messages = sorted((_resolve_reaction(p, msg, by_id, problems) for p, msg in parsed.values()),
                      key=lambda x: x.ts or 0)  # stable: equal times keep the file's order
    return Chat(jid, name, group, auto, tuple(messages)) if len(problems) == before else None


def _account(data: dict, path: str, problems: _Problems, seed: int) -> Optional[Account]:
    before = len(problems)
    obj = _Obj(data, path, problems, {"phone", "pushName", "paired", "initialSyncPerChat", "chats", "generate"})
    phone, push_name = obj.get("phone", _PHONE, required=True), obj.get("pushName", _STR)
    paired, per_chat = obj.get("paired", _BOOL, True), obj.get("initialSyncPerChat", _COUNT, 50)
    chats: dict[str, Chat] = {}
    for cpath, cdata in obj.objects("chats"):
        chat = _chat(cdata, cpath, problems)
        if chat and chat.jid in chats:
            problems.add(f"{cpath}.jid", f"duplicate chat {chat.jid}")
        elif chat:
            chats[chat.jid] = chat
    spec = _generate_spec(obj)
    if len(problems) != before:
        return None
    generated = generate_chats(seed, phone, spec, taken={*chats, f"{phone}@s.whatsapp.net"}) if spec else ()
    return Account(phone, push_name, paired, per_chat, (*chats.values(), *generated), spec)


def _generate_spec(obj: _Obj) -> Optional[Generate]:
    data = obj.data.get("generate")
    if data is None:
        return None
    if not isinstance(data, dict):
        obj.bad("generate", 'expected an object like {"chats": 20, "messagesPerChat": 300}')
        return None
    gen = _Obj(data, _at(obj.path, "generate"), obj.problems, {"chats", "messagesPerChat"})
    return Generate(gen.get("chats", _COUNT, 0, required=True), gen.get("messagesPerChat", _COUNT, 0, required=True))


# --- the timeline ----------------------------------------------------------------------

_EVENT_FIELDS = {"message": {"chat", "offline"} | MESSAGE_FIELDS, "receipt": {"chat", "ids", "type"},
                 "disconnect": {"for"}, "degrade": {"for", "healsOn"}, "logout": {"reason"},
                 "ban": {"for", "code"}, "traffic": {"rate", "for"}}


class _Known:
    """What timeline events are checked against: the accounts, and each chat's message
    ids (history, then the timeline's own messages), built lazily per chat."""

    def __init__(self, accounts: tuple[Account, ...], declared: set[str]):
        self.accounts = {a.phone: a for a in accounts}
        self.declared = declared  # the phone of every account entry, valid or not
        self._ids: dict[tuple[str, str], dict[str, WorldMessage]] = {}
        self.receipts: list[tuple[str, str, str, tuple[str, ...]]] = []  # (path, phone, chat, ids)

    def ids(self, phone: str, chat: str) -> dict[str, WorldMessage]:
        if (phone, chat) not in self._ids:
            found = self.accounts[phone].chat(chat) if phone in self.accounts else None
            self._ids[(phone, chat)] = {m.id: m for m in found.messages} if found else {}
        return self._ids[(phone, chat)]


def _event_fields(kind: str, obj: _Obj, phone: Optional[str], known: _Known, rng: random.Random) -> dict:
    """The kind-specific fields of one timeline event."""
    if kind in ("disconnect", "degrade", "ban", "traffic"):
        fields: dict[str, Any] = dict(duration=obj.get("for", _POSITIVE, required=True))
    if kind == "message":
        chat = obj.get("chat", _JID, required=True)
        msg = _message(obj, chat, live=True, new_id=None if "id" in obj.data else new_message_id(rng))
        if msg and chat and phone:
            ids = known.ids(phone, chat)
            if msg.id in ids:
                obj.bad("id", f"duplicate message id {msg.id!r} in this chat")
            msg = _resolve_reaction(obj.path, msg, ids, None)
            ids[msg.id] = msg
        return dict(chat=chat, message=msg, offline=obj.get("offline", _enum(OFFLINE_MODES), "deliver"))
    if kind == "receipt":
        chat, ids = obj.get("chat", _JID, required=True), obj.get("ids", _ids, (), required=True)
        if chat and phone:
            known.receipts.append((obj.path, phone, chat, ids))  # checked once all messages are known
        return dict(chat=chat, ids=ids, receipt_type=obj.get("type", _enum(RECEIPT_TYPES), required=True))
    if kind == "degrade":
        fields["heals_on"] = obj.get("healsOn", _enum(HEALS_ON), "restart")
    elif kind == "logout":
        return dict(reason=obj.get("reason", _enum(LOGOUT_REASONS), "LOGGED_OUT"))
    elif kind == "ban":
        fields["code"] = obj.get("code", _enum(BAN_CODES), "SENT_TOO_MANY_SAME_MESSAGE")
    elif kind == "traffic":
        fields["rate"] = obj.get("rate", _POSITIVE, required=True)
        if phone in known.accounts and not known.accounts[phone].chats:
            obj.bad("account", "traffic needs at least one chat on this account")
    return fields


def _event(data: dict, path: str, problems: _Problems, known: _Known, rng: random.Random,
           *, with_at: bool) -> Optional[TimelineEvent]:
    kind = data.get("event")
    if kind not in EVENT_KINDS:
        problems.add(_at(path, "event"), f"expected one of {', '.join(EVENT_KINDS)}" if "event" in data else "required")
        return None
    before = len(problems)
    obj = _Obj(data, path, problems, {"at", "account", "event"} | _EVENT_FIELDS[kind])
    at, phone = obj.get("at", _AT, 0.0, required=with_at), obj.get("account", _PHONE, required=True)
    if phone and phone not in known.declared:
        obj.bad("account", f"no account with phone {phone} in this world")
    fields = _event_fields(kind, obj, phone, known, rng)
    return TimelineEvent(at, phone, kind, **fields) if len(problems) == before else None


def _timeline(items: list[tuple[str, dict]], problems: _Problems, known: _Known, rng: random.Random,
              *, with_at: bool) -> tuple[TimelineEvent, ...]:
    events = [_event(data, path, problems, known, rng, with_at=with_at) for path, data in items]
    # Receipts are for outbound messages: an unknown id may be sent by a client later,
    # an id known to be inbound is a mistake.
    for path, phone, chat, ids in known.receipts:
        messages = known.ids(phone, chat)
        for i, mid in enumerate(ids):
            if mid in messages and not messages[mid].from_me:
                problems.add(f"{path}.ids[{i}]", f"{mid!r} is inbound; receipts are for outbound messages")
    if problems:
        raise WorldError(problems)
    return tuple(sorted(events, key=lambda e: e.at))  # stable: equal times keep the file's order


# --- entry points ----------------------------------------------------------------------


def parse_world(data: Any) -> World:
    """The World a decoded world file describes, generated chats included. Raises WorldError."""
    if not isinstance(data, dict):
        raise WorldError(["(root): expected a JSON object with seed, accounts and timeline"])
    problems = _Problems()
    root = _Obj(data, "", problems, {"seed", "accounts", "timeline", "notOnWhatsApp"})
    seed = root.get("seed", _INT, 0)
    absent = root.get("notOnWhatsApp", _PHONES, ())
    entries = root.objects("accounts", required=True)
    if data.get("accounts") == []:
        root.bad("accounts", "expected at least one account")
    accounts: dict[str, Account] = {}
    for path, entry in entries:
        account = _account(entry, path, problems, seed)
        if account and account.phone in accounts:
            problems.add(f"{path}.phone", f"duplicate account {account.phone}")
        elif account:
            accounts[account.phone] = account
    declared = {e["phone"] for _, e in entries if isinstance(e.get("phone"), str)}
    known = _Known(tuple(accounts.values()), declared)
    rng = random.Random(stable_seed(seed, "timeline"))  # ids for timeline messages that name none
    return World(seed, tuple(accounts.values()), _timeline(root.objects("timeline"), problems, known, rng, with_at=True),
                 not_on_whatsapp=frozenset(absent))


def load_world(path: str | Path) -> World:
    """Read and parse a world file. Raises WorldError (OSError if it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorldError([f"(file {path}): not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from exc
    return parse_world(data)


def parse_events(data: Any, world: World, *, rng: Optional[random.Random] = None) -> tuple[TimelineEvent, ...]:
    """Timeline events injected at run time (POST /sim/events): a list or one object,
    `at` optional (0 = now); paths read `events[i].field`. Raises WorldError."""
    problems = _Problems()
    items = _objects(data if isinstance(data, list) else [data], "events", problems, True)
    known = _Known(world.accounts, {a.phone for a in world.accounts})
    return _timeline(items, problems, known, rng or random.Random(), with_at=False)
