"""Compare what a store holds with the simulator's ground truth (`GET /sim/world`).

DESIGN "Testing doctrine": every message the client received exactly once, right
fields, right final status; every thread describing its newest stored message; nothing
else stored (protocol messages, dropped or held messages, the account's own JID).

The store is read only through its public reads (`list_threads`, `list_messages`,
`get_thread`), paging with cursors as the API does, so a listing that repeats or skips a
document is caught as well as a missing or duplicated one.

`compare` returns a list of problems (one line each) rather than asserting, so a test
can show the first few and the total: one wrong rule usually breaks hundreds of
messages at once.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

RECEIVED = ("history", "live", "sent")  # `via` of messages the client got
NOT_RECEIVED = ("dropped", "held")
PREVIEW_CHARS = 100
MEDIA = ("image", "video", "audio", "document", "sticker")
PAGE = 200
# How a received message first reached the store (a message the daemon sent is left
# out: the outbox design decides that).
SYNC_SOURCE = {"history": "history_sync", "live": "realtime"}


def own_jid(phone: str) -> str:
    return f"{phone}@s.whatsapp.net"


@dataclass
class Expected:
    """The ground truth of one account, keyed by chat JID."""

    account_id: str
    phone: str
    chats: dict[str, dict[str, dict]] = field(default_factory=dict)  # jid -> id -> world message
    not_received: dict[str, dict[str, dict]] = field(default_factory=dict)  # dropped / held
    names: dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(msgs) for msgs in self.chats.values())


def expected(world: dict, accounts: dict[str, str]) -> dict[str, Expected]:
    """account id -> Expected, for `accounts` ({phone: account id}) of a /sim/world."""
    out: dict[str, Expected] = {}
    by_phone = {a["phone"]: a for a in world["accounts"]}
    for phone, account_id in accounts.items():
        exp = Expected(account_id, phone)
        for chat in by_phone[phone]["chats"]:
            jid = chat["jid"]
            exp.names[jid] = chat.get("name")
            got = {m["id"]: m for m in chat["messages"] if m["via"] in RECEIVED}
            lost = {m["id"]: m for m in chat["messages"] if m["via"] in NOT_RECEIVED}
            if got:
                exp.chats[jid] = got
            if lost:
                exp.not_received[jid] = lost
        out[account_id] = exp
    return out


def count_via(world: dict, phone: str) -> Counter:
    acct = next(a for a in world["accounts"] if a["phone"] == phone)
    return Counter(m["via"] for c in acct["chats"] for m in c["messages"])


# --- what a stored message should look like --------------------------------------------


def expected_body(msg: dict) -> Optional[str]:
    kind = msg.get("type", "text")
    if kind in ("text", "reaction"):
        return msg.get("text") or None
    if kind == "location":  # the place's name (the simulator sends no address)
        return msg.get("text") or f"{msg.get('latitude', 0.0)},{msg.get('longitude', 0.0)}"
    if kind == "contact":  # the card's display name
        return msg.get("text") or "Contact"
    return None


def expected_preview(msg: dict) -> str:
    """runtime/model.py Message.preview, from the world's side."""
    text = expected_body(msg) or msg.get("caption") or ""
    kind = msg.get("type", "text")
    if not text and kind != "text":
        text = f"[{kind}]"
    return text[:PREVIEW_CHARS]


def message_problems(doc: dict, msg: dict, *, account_id: str, phone: str, chat_jid: str,
                     group: bool) -> list[str]:
    """Differences between a stored message document and its world message."""
    where = f"{account_id} {chat_jid} {msg['id']} (via {msg['via']}, {msg.get('type', 'text')})"
    problems = []

    def check(name: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{where}: {name} is {got!r}, expected {want!r}")

    from_me = msg.get("fromMe", False)
    kind = msg.get("type", "text")
    check("id", doc.get("id"), msg["id"])
    check("accountId", doc.get("accountId"), account_id)
    check("clientJid", doc.get("clientJid"), chat_jid)
    check("direction", doc.get("direction"), "outbound" if from_me else "inbound")
    check("messageType", doc.get("messageType"), kind)
    check("isGroup", doc.get("isGroup"), group)
    check("body", doc.get("body"), expected_body(msg))
    check("caption", doc.get("caption"), msg.get("caption"))
    ts_ms = doc.get("tsClientMs")
    if msg["via"] == "history":
        check("tsClientMs", ts_ms, msg["ts"] * 1000)  # history carries whole seconds
    elif not isinstance(ts_ms, int) or ts_ms // 1000 != msg["ts"]:
        # Live messages carry milliseconds on the wire; /sim/world reports seconds.
        problems.append(f"{where}: tsClientMs is {ts_ms!r}, expected within second {msg['ts']}")
    if group:
        check("senderJid", doc.get("senderJid"), own_jid(phone) if from_me else msg.get("sender"))
    elif from_me:
        check("senderJid", doc.get("senderJid"), None)
    else:
        check("senderJid", doc.get("senderJid"), chat_jid)
    check("status", doc.get("status"), msg.get("status", "sent") if from_me else None)
    if msg["via"] in SYNC_SOURCE:
        check("syncSource", doc.get("syncSource"), SYNC_SOURCE[msg["via"]])
    if kind in MEDIA:
        check("mediaType", doc.get("mediaType"), kind)
        check("mediaMimetype", doc.get("mediaMimetype"), msg.get("mimetype"))
        if kind == "document":
            check("mediaFilename", doc.get("mediaFilename"), msg.get("filename"))
    if kind == "reaction":  # the reacted-to message, as a reply's quoted id
        check("quotedMessageId", doc.get("quotedMessageId"), msg.get("target"))
    return problems


# --- reading the store ---------------------------------------------------------------


def all_threads(store, account_id: str) -> list[dict]:
    out, cursor = [], None
    while True:
        page = store.list_threads(account_id, limit=PAGE, cursor=cursor)
        out.extend(page.items)
        if not page.next_cursor:
            return out
        cursor = page.next_cursor


def all_messages(store, account_id: str, thread_id: str) -> list[dict]:
    out, cursor = [], None
    while True:
        page = store.list_messages(account_id, thread_id, limit=PAGE, cursor=cursor)
        out.extend(page.items)
        if not page.next_cursor:
            return out
        cursor = page.next_cursor


def stored_count(store, account_id: str) -> int:
    return sum(len(all_messages(store, account_id, f"{account_id}__{t['clientJid']}"))
               for t in all_threads(store, account_id))


# --- the comparison ---------------------------------------------------------------------


def compare(store, world: dict, accounts: dict[str, str], *, check_fields: bool = True) -> list[str]:
    """Every difference between `store` and the ground truth for `accounts`
    ({phone: account id}); empty when they agree."""
    problems: list[str] = []
    for account_id, exp in expected(world, accounts).items():
        problems += _compare_account(store, exp, check_fields)
    return problems


def _compare_account(store, exp: Expected, check_fields: bool) -> list[str]:
    problems: list[str] = []
    account_id = exp.account_id
    listed = all_threads(store, account_id)
    listed_jids = Counter(t.get("clientJid") for t in listed)
    for jid, n in listed_jids.items():
        if n > 1:
            problems.append(f"{account_id}: thread {jid} listed {n} times")
    for jid in listed_jids:
        if jid not in exp.chats:
            problems.append(f"{account_id}: unexpected thread {jid!r} (not a chat with received messages)")
    if own_jid(exp.phone) in listed_jids:
        problems.append(f"{account_id}: a thread for the account's own JID (protocol messages stored?)")
    for jid in exp.chats.keys() - listed_jids.keys():
        problems.append(f"{account_id}: thread {jid} is not listed ({len(exp.chats[jid])} messages expected)")
    for jid in sorted(exp.chats.keys() | listed_jids.keys()):
        problems += _compare_thread(store, exp, jid, check_fields)
    return problems


def _compare_thread(store, exp: Expected, jid: str, check_fields: bool) -> list[str]:
    problems: list[str] = []
    account_id, tid = exp.account_id, f"{exp.account_id}__{jid}"
    want = exp.chats.get(jid, {})
    docs = all_messages(store, account_id, tid)
    counts = Counter(d.get("id") for d in docs)
    for mid, n in counts.items():
        if n > 1:
            problems.append(f"{account_id} {jid} {mid}: stored/listed {n} times")
    lost = exp.not_received.get(jid, {})
    for mid in counts.keys() - want.keys():
        if mid in lost:
            problems.append(f"{account_id} {jid} {mid}: stored, but the client never received it "
                            f"(via {lost[mid]['via']})")
        else:
            problems.append(f"{account_id} {jid} {mid}: stored, but not a message of this chat in the world")
    missing = want.keys() - counts.keys()
    for mid in sorted(missing, key=lambda m: want[m]["ts"]):
        problems.append(f"{account_id} {jid} {mid}: missing (via {want[mid]['via']}, ts {want[mid]['ts']})")
    group = jid.endswith("@g.us")
    by_id = {d.get("id"): d for d in docs}
    if check_fields:
        for mid in want.keys() & by_id.keys():
            problems += message_problems(by_id[mid], want[mid], account_id=account_id, phone=exp.phone,
                                         chat_jid=jid, group=group)
    if not want:
        return problems
    # The thread describes its newest stored message (and, when all is stored, the
    # world's newest received message).
    thread = store.get_thread(tid)
    if thread is None:
        return problems + [f"{account_id} {jid}: no thread document"]
    if docs:
        newest = max(docs, key=lambda d: (d.get("tsClientMs") or 0, d.get("id") or ""))
        if thread.get("lastMessageAtMs") != newest.get("tsClientMs"):
            problems.append(f"{account_id} {jid}: thread lastMessageAtMs {thread.get('lastMessageAtMs')} != newest "
                            f"stored message {newest.get('id')} tsClientMs {newest.get('tsClientMs')}")
        world_newest = want.get(newest.get("id"))
        if world_newest is not None and thread.get("lastMessagePreview") != expected_preview(world_newest):
            problems.append(f"{account_id} {jid}: thread lastMessagePreview {thread.get('lastMessagePreview')!r}, "
                            f"expected {expected_preview(world_newest)!r} (message {newest.get('id')})")
    newest_world_s = max(m["ts"] for m in want.values())
    at_ms = thread.get("lastMessageAtMs")
    if not isinstance(at_ms, int) or at_ms // 1000 != newest_world_s:
        problems.append(f"{account_id} {jid}: thread lastMessageAtMs {at_ms} is not in the second of the "
                        f"world's newest received message ({newest_world_s})")
    if thread.get("isGroup") is not None and thread.get("isGroup") != group:
        problems.append(f"{account_id} {jid}: thread isGroup {thread.get('isGroup')}, expected {group}")
    name = exp.names.get(jid)
    if name and thread.get("displayName") != name:
        problems.append(f"{account_id} {jid}: thread displayName {thread.get('displayName')!r}, expected {name!r}")
    if thread.get("accountId") != account_id:
        problems.append(f"{account_id} {jid}: thread accountId {thread.get('accountId')!r}")
    return problems


def summary(problems: Iterable[str], show: int = 25) -> str:
    problems = list(problems)
    head = "\n".join(problems[:show])
    more = f"\n... and {len(problems) - show} more" if len(problems) > show else ""
    return f"{len(problems)} differences between the store and /sim/world:\n{head}{more}"
