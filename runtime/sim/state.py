"""The simulated WhatsApp's state and ground truth (docs/simulator.md): no aiohttp, no sockets.

What lives here, per account: the chats with every message's `via` and outbound
status, the outbox of events not acknowledged yet (per-account `seq`), the
backlog of live messages not delivered yet, blocks (disconnect, ban) and degradation.
The rules that move it are in engine.py (sessions) and timeline.py (timeline events);
service.py only moves frames.

Choices (reviewers take note):
- Deadlines here are timeline seconds (clock.py).
- A chat keeps its messages sorted by (ts ms, arrival), so "older than the anchor" is a
  bisect, never a scan.
- Each event is serialized once, into the exact text frame that is sent and, until
  acknowledged, re-sent.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import random
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Optional, Protocol

from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim import wire
from wasync.runtime.sim.world import STATUSES, Account, Chat, WorldMessage

log = logging.getLogger("wasync.sim")

# `via` of a message in the ground truth (docs/simulator.md, GET /sim/world).
HISTORY, LIVE, DROPPED, HELD, SENT = "history", "live", "dropped", "held", "sent"


# --- the sockets, as the simulation sees them ----------------------------------------


class Link(Protocol):
    """A client socket (service.py): frames are queued and written in order."""

    def send(self, text: str) -> None: ...

    def close(self, reason: Optional[str], retry_after_s: Optional[float], linger: bool = False) -> None:
        """Send a `closing` frame (unless reason is None), then close the socket; with
        `linger`, first give the client a moment to acknowledge what it was sent."""

    def settle(self) -> None:
        """Nothing left to wait for: a lingering close can go ahead."""


class Conn:
    """One client socket: which account's session it is, what it was sent."""

    def __init__(self, link: Link, number: int):
        self.link, self.number = link, number
        self.phone: Optional[str] = None  # the account this socket is (was) a session of
        self.counted = False  # in its account's open sessions (until either side closes it)
        self.pairing = None  # engine.Pairing while it shows QR codes
        self.hello = False
        self.open = True  # False once the service started closing it
        self.sent_upto = 0  # highest seq sent here: an ack can't go past it

    def push(self, seq: int, text: str) -> None:
        if self.open:
            self.link.send(text)
            self.sent_upto = max(self.sent_upto, seq)

    def tell(self, event) -> None:
        """An event about this socket alone (seq 0, see wire.py): not kept, not re-sent."""
        kind, raw = pb.wire(event)
        self.push(wire.TRANSIENT_SEQ, wire.event_frame(wire.TRANSIENT_SEQ, kind, raw))

    def frame(self, frame: dict) -> None:
        if self.open:
            self.link.send(wire.encode(frame))

    def reply(self, req, result: Optional[dict] = None, *, error: Optional[str] = None, message: str = "") -> None:
        err = {"reason": error, "message": message} if error else None
        self.frame({"op": "reply", "req": req, "ok": error is None, "result": None if error else (result or {}),
                    "error": err})

    def close(self, reason: Optional[str], retry_after_s: Optional[float] = None, *, acked: int = 0) -> None:
        """Closing frame, then close; lingers for acks while the account's `acked` seq is
        behind what this socket was sent."""
        if self.open:
            self.open = False
            retry = None if retry_after_s is None else round(retry_after_s, 3)
            self.link.close(reason, retry, linger=acked < self.sent_upto)


# --- the outbox: events kept until acknowledged ---------------------------------------


class Outbox:
    def __init__(self) -> None:
        self._items: deque[tuple[int, str]] = deque()
        self.last_seq = 0
        self.acked = 0

    def add(self, event) -> tuple[int, str]:
        kind, raw = pb.wire(event)
        self.last_seq += 1
        item = (self.last_seq, wire.event_frame(self.last_seq, kind, raw))
        self._items.append(item)
        return item

    def ack(self, seq: int) -> None:
        while self._items and self._items[0][0] <= seq:
            self._items.popleft()
        self.acked = max(self.acked, min(seq, self.last_seq))

    def pending(self) -> list[tuple[int, str]]:
        return list(self._items)

    def discard(self) -> None:
        """A new session: what the old one left unacknowledged is void (seq goes on)."""
        self._items.clear()
        self.acked = self.last_seq

    def __len__(self) -> int:
        return len(self._items)


# --- chats and messages ----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Record:
    msg: WorldMessage  # ts always set
    via: str
    ts_ms: int
    arrival: int  # ties on ts_ms keep arrival order
    status: Optional[str]  # outbound: the furthest receipt state reached

    def key(self) -> tuple[int, int]:
        return self.ts_ms, self.arrival


class ChatState:
    """One chat as the phone holds it now: time-0 history, live and sent messages."""

    def __init__(self, jid: str, name: Optional[str] = None, group: Optional[bool] = None,
                 auto_receipts: bool = True, initial: tuple[WorldMessage, ...] = ()):
        self.jid, self.name, self.auto_receipts = jid, name, auto_receipts
        self.group = jid.endswith("@g.us") if group is None else group
        self.initial = initial  # the world file's messages: what history sync carries
        # The world's messages come sorted by ts: index them in one pass (large
        # generated worlds hold millions).
        self.records: list[Record] = [
            Record(msg, HISTORY, (msg.ts or 0) * 1000, n, msg.status if msg.from_me else None)
            for n, msg in enumerate(initial)]
        self._arrival = itertools.count(len(initial))
        self.by_id: dict[str, Record] = {r.msg.id: r for r in self.records}
        # A group participant, to name who read a receipt.
        self.last_sender = next((m.sender for m in reversed(initial) if m.sender and not m.from_me), None)

    @classmethod
    def from_world(cls, chat: Chat) -> "ChatState":
        return cls(chat.jid, chat.name, chat.group, chat.auto_receipts, chat.messages)

    @property
    def world_chat(self) -> Chat:
        """What protobufs.py needs of the chat (history conversations)."""
        return Chat(self.jid, self.name, self.group, self.auto_receipts)

    def add(self, msg: WorldMessage, via: str, ts_ms: int) -> Record:
        record = Record(msg, via, ts_ms, next(self._arrival), msg.status if msg.from_me else None)
        self.records.insert(bisect.bisect(self.records, record.key(), key=Record.key), record)
        self.by_id[msg.id] = record
        if msg.sender and not msg.from_me:
            self.last_sender = msg.sender
        return record

    def history_now(self, newest: int) -> list[WorldMessage]:
        """The newest `newest` messages of the time-0 history, with their current status."""
        picked = self.initial[-newest:] if newest > 0 else ()
        return [_current(self.by_id[m.id]) for m in picked]

    def older_than(self, anchor_id: str, count: int) -> Optional[list[WorldMessage]]:
        """Up to `count` messages just before the anchor (oldest first), with their
        current status; None if the anchor is not in this chat."""
        anchor = self.by_id.get(anchor_id)
        if anchor is None:
            return None
        at = bisect.bisect_left(self.records, anchor.key(), key=Record.key)
        return [_current(r) for r in self.records[max(0, at - count):at]]

    def newer_than(self, anchor_id: str, count: int) -> Optional[list[WorldMessage]]:
        """Up to `count` messages just after the anchor (oldest first), with their current
        status; None if the anchor is not in this chat. The same messages `older_than`
        can give: every one the phone holds, whether it reached the client or not."""
        anchor = self.by_id.get(anchor_id)
        if anchor is None:
            return None
        at = bisect.bisect_right(self.records, anchor.key(), key=Record.key)
        return [_current(r) for r in self.records[at:at + count]]

    def is_first(self, msg_id: str) -> bool:
        """Whether `msg_id` is the chat's oldest message: nothing older for a client to get."""
        return bool(self.records) and self.records[0].msg.id == msg_id


def _current(record: Record) -> WorldMessage:
    msg = record.msg
    return replace(msg, status=record.status) if msg.from_me and msg.status != record.status else msg


def furthest(status: Optional[str], receipt: str) -> str:
    old = STATUSES.index(status) if status in STATUSES else 0
    return STATUSES[max(old, STATUSES.index(receipt))]


# --- accounts ----------------------------------------------------------------------------


@dataclass
class Block:
    kind: str  # "disconnect" | "ban"
    until: float  # timeline seconds
    code: str = ""  # ban: TemporaryBan code


@dataclass(eq=False)
class Degrade:
    until: float
    heals_on: str  # "restart" | "repair"


CONNECT_TIMES_KEPT = 100


@dataclass
class Stats:
    connections_opened: int = 0
    connections_refused: int = 0
    max_concurrent: int = 0
    stream_replaced: int = 0
    delivered: int = 0
    dropped: int = 0
    history_requests: int = 0
    pairings: int = 0
    logouts: int = 0
    sent: int = 0  # distinct messages clients sent
    sent_again: int = 0  # sends under an id already sent: the same message, not a new one
    mark_read: int = 0
    events_sent: int = 0
    events_resent: int = 0
    # real wall-clock ms of the latest accepted connections (oldest first), so tests can
    # measure reconnect rates; capped to keep a long-running service small
    connected_at_ms: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class AccountState:
    """One phone: its chats, its session's event stream, what waits for delivery."""

    def __init__(self, account: Account, rng: random.Random):
        self.phone, self.push_name = account.phone, account.push_name
        self.rng = rng  # ids of what the service makes up: sends, traffic, notifications
        self.per_chat = account.initial_sync_per_chat
        self.paired = account.paired
        self.history_due = account.paired  # paired in the world: sync on the first connect
        self.generation = 0  # bumped by every pairing and logout: older tokens stop working
        self.chats = {c.jid: ChatState.from_world(c) for c in account.chats}
        self.outbox = Outbox()
        self.conn: Optional[Conn] = None  # the live session, if any
        self.open_sessions = 0  # sockets that are this phone's session and open: 2 while one replaces another
        self.backlog: deque[tuple[ChatState, Record]] = deque()  # live messages not delivered yet
        self.block: Optional[Block] = None
        self.degrade: Optional[Degrade] = None
        self.stats = Stats()

    def chat(self, jid: str) -> ChatState:
        """The chat, created (nameless) when a message or a send names a new one."""
        if jid not in self.chats:
            self.chats[jid] = ChatState(jid)
        return self.chats[jid]

    # --- sessions

    def bind(self, conn: Conn, now_ms: int) -> None:
        """`conn` becomes the phone's session (the caller replaces any older one)."""
        self.conn, conn.phone, conn.counted = conn, self.phone, True
        self.open_sessions += 1
        self.stats.connections_opened += 1
        self.stats.connected_at_ms = (self.stats.connected_at_ms + [now_ms])[-CONNECT_TIMES_KEPT:]
        self.stats.max_concurrent = max(self.stats.max_concurrent, self.open_sessions)

    def release(self, conn: Conn) -> None:
        """`conn` is closing or gone: no longer a session."""
        if conn.counted:
            conn.counted = False
            self.open_sessions -= 1
        if self.conn is conn:
            self.conn = None

    # --- the event stream

    def emit(self, event) -> int:
        """Keep the event until acknowledged and send it if a session is live; its seq."""
        seq, text = self.outbox.add(event)
        if self.conn is not None:
            self.conn.push(seq, text)
            self.stats.events_sent += 1
        return seq

    def resend_unacked(self) -> None:
        for seq, text in self.outbox.pending():
            self.conn.push(seq, text)
            self.stats.events_sent += 1
            self.stats.events_resent += 1

    def ack(self, conn: Conn, seq: int) -> None:
        self.outbox.ack(min(seq, conn.sent_upto))
        if not conn.open and self.outbox.acked >= conn.sent_upto:
            conn.link.settle()  # a closing socket whose client caught up: close it now

    # --- live messages

    def post_live(self, chat: ChatState, msg: WorldMessage, ts_ms: int, *, offline: str = "deliver") -> Record:
        """A live message reaching the phone: delivered, held back, or lost for the client."""
        record = chat.add(msg, HELD, ts_ms)
        if self.conn is not None and self.degrade is None:
            self._deliver(chat, record)
        elif self.conn is not None or offline != "drop":  # a degraded session holds even "drop"
            self.backlog.append((chat, record))
        else:
            record.via = DROPPED
            self.stats.dropped += 1
        return record

    def deliver_backlog(self) -> int:
        count = len(self.backlog)
        while self.backlog:
            self._deliver(*self.backlog.popleft())
        return count

    def drop_backlog(self) -> int:
        count = len(self.backlog)
        for _, record in self.backlog:
            record.via = DROPPED
        self.backlog.clear()
        self.stats.dropped += count
        return count

    def _deliver(self, chat: ChatState, record: Record) -> None:
        msg = record.msg
        push_name = (self.push_name or "") if msg.from_me else None
        self.emit(pb.message_event(self.phone, chat.jid, msg, push_name=push_name, ts_ms=record.ts_ms))
        record.via = LIVE
        self.stats.delivered += 1

    # --- receipts

    def receipt(self, chat_jid: str, ids: Iterable[str], kind: str, ts_s: int) -> None:
        """Receipts for outbound messages: ground truth moves forward, the event is sent
        (or kept for the next connection, like any event)."""
        ids = list(ids)
        chat = self.chats.get(chat_jid)
        reader = None
        if chat is not None:
            for mid in ids:
                record = chat.by_id.get(mid)
                if record is not None and record.msg.from_me:
                    record.status = furthest(record.status, kind)
            reader = chat.last_sender if chat.group else None
        self.emit(pb.receipt_event(self.phone, chat_jid, ids, kind, ts_s, reader_jid=reader))

    # --- views

    def world_json(self) -> dict:
        chats = [{"jid": c.jid, "name": c.name, "group": c.group, "autoReceipts": c.auto_receipts,
                  "messages": [message_json(r) for r in c.records]} for c in self.chats.values()]
        return {"phone": self.phone, "pushName": self.push_name, "paired": self.paired,
                "initialSyncPerChat": self.per_chat, "chats": chats}

    def stats_json(self, now: float) -> dict:
        return {**self.stats.to_json(), "held": len(self.backlog), "concurrent": self.open_sessions,
                "connected": self.conn is not None, "paired": self.paired,
                "degraded": self.degrade.heals_on if self.degrade else None,
                "blocked": self.block.kind if self.block and self.block.until > now else None,
                "lastSeq": self.outbox.last_seq, "acked": self.outbox.acked, "unacked": len(self.outbox)}


_OPTIONAL = (("sender", "sender"), ("text", "text"), ("caption", "caption"), ("mimetype", "mimetype"),
             ("filename", "filename"), ("pushName", "push_name"), ("target", "target"),
             ("latitude", "latitude"), ("longitude", "longitude"))


def message_json(record: Record) -> dict:
    msg = record.msg
    out = {"id": msg.id, "fromMe": msg.from_me, "ts": msg.ts, "type": msg.type}
    out.update((key, getattr(msg, attr)) for key, attr in _OPTIONAL if getattr(msg, attr) is not None)
    if msg.from_me:
        out["status"] = record.status or "sent"
    out["via"] = record.via
    return out
