"""The simulated WhatsApp's session rules (docs/simulator.md, wire.py): hello, pairing, the
client's operations, and the session actions timeline events share (end a session,
block, log out). Synchronous and socket-agnostic: service.py hands it each frame and
each closed socket; it answers through every Conn's Link. Timeline events are applied
by timeline.py.

Choices (reviewers take note):
- A hello resumes a session by token (from a pairing on this service, still current)
  or by phone (the account is paired); anything else starts a pairing. Tokens die with
  the next pairing or logout of their phone.
- On every connect: the events not acknowledged yet (in order), then `Connected`, the
  initial history sync when due, then the backlog of live messages and
  `OfflineSyncCompleted` with how many that was (0 included) — except while degraded,
  when the backlog stays held and no `OfflineSyncCompleted` is sent.
- A new pairing is a new session: the previous session's unacknowledged events are
  discarded (seq goes on), a live socket of that phone is replaced (`StreamReplaced`).
- `history` with an unknown chat or anchor is answered ok, with an empty ON_DEMAND
  batch (no conversation for an unknown chat, the chat without messages for an unknown
  anchor): the client never waits for an answer that cannot come. "before" and "after"
  read the same messages (all the phone holds of the chat, whether the client got them
  or not); only a "before" answer reaching the chat's first message says that nothing
  older remains (historysync.on_demand_end).
- `pair_phone` answers {"code": "ABCD-EFGH"} (8 characters of whatsmeow's alphabet,
  dash in the middle); scanning accepts that code, with or without the dash, in place
  of a QR code.
- A logout drops the messages waiting for its session (via `dropped`); messages that
  arrive while no session exists wait for the next one, pairing included.
- Receipts are plain events: without a client they wait in the outbox like any other.
- `retry_after_s` and `TemporaryBan.Expire` are real seconds (timeline ÷ speed; Expire
  rounded up, at least 1): what the client actually has to wait.
- Scanning for a phone that is banned or inside a disconnect window answers 409.
"""
from __future__ import annotations

import base64
import itertools
import logging
import math
import random
import re
import secrets
from typing import Any, Callable, Optional

from wasync.runtime.sim import historysync
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim import wire
from wasync.runtime.sim.clock import SimTime, Timer, Timers
from wasync.runtime.sim.state import SENT, AccountState, Block, ChatState, Conn, Link
from wasync.runtime.sim.world import World, WorldMessage, new_message_id, stable_seed

log = logging.getLogger("wasync.sim")

QR_EVERY_S = 20.0  # timeline seconds between QR events, as whatsmeow rotates them
QR_CODES = 3  # codes per QR event; every code of the latest event can be scanned
RECEIPT_AFTER_S = (("delivered", 0.5), ("read", 2.0))
PAIR_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"  # whatsmeow's: no 0/O or I/1 to confuse
CLOSING_REASONS = {"disconnect": "disconnect", "ban": "banned"}
# How a history request reads from its anchor, by its `direction`.
_DIRECTIONS = {wire.HISTORY_BEFORE: ChatState.older_than, wire.HISTORY_AFTER: ChatState.newer_than}
_MESSAGE_ID = re.compile(r"[0-9A-F]{8,64}")
# The JID shapes world.py accepts for chats.
_JID = re.compile(r"\d{5,20}@s\.whatsapp\.net|\d{5,25}(-\d{5,15})?@g\.us")
_PHONE = re.compile(r"\d{5,20}")


class Refused(Exception):
    """An operation answered with an error reply."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _bad(message: str) -> Refused:
    return Refused(wire.BAD_REQUEST, message)


def _field(frame: dict, key: str, ok: Callable[[Any], bool], expected: str) -> Any:
    value = frame.get(key)
    if not ok(value):
        raise _bad(f"{key}: expected {expected}")
    return value


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _optional_text(v: Any) -> bool:
    return v is None or isinstance(v, str)


class Pairing:
    """A socket showing QR codes until one is scanned."""

    def __init__(self, conn: Conn):
        self.conn = conn
        self.codes: tuple[str, ...] = ()
        self.pair_codes: list[str] = []  # the pairing codes it was given (pair_phone)
        self.timer: Optional[Timer] = None


class Simulation:
    def __init__(self, world: World, time: SimTime, timers: Timers, *, id_salt: int = 0):
        self.world, self.time, self.timers = world, time, timers
        self.accounts = {
            a.phone: AccountState(a, random.Random(stable_seed(world.seed, a.phone, "service", id_salt)))
            for a in world.accounts
        }
        self.event_rng = random.Random(stable_seed(world.seed, "injected", id_salt))  # ids for POST /sim/events
        self.tokens: dict[str, tuple[str, int]] = {}  # token -> (phone, generation)
        self.conns: set[Conn] = set()
        self._numbers = itertools.count(1)
        self._qr: dict[str, Pairing] = {}
        self._pair_codes: dict[str, tuple[Pairing, str]] = {}  # code without dash -> (socket, phone)
        self._ops: dict[str, Callable[[Conn, dict], None]] = {
            "hello": self._hello, "ack": self._ack, "send": self._send, "mark_read": self._mark_read,
            "history": self._history, "pair_phone": self._pair_phone, "logout": self._logout_op,
        }

    def wall_s(self) -> int:
        return self.time.wall_ms() // 1000

    # --- sockets ---------------------------------------------------------------------

    def open(self, link: Link) -> Conn:
        conn = Conn(link, next(self._numbers))
        self.conns.add(conn)
        return conn

    def receive(self, conn: Conn, text: str) -> None:
        """One text frame from a client; never raises."""
        try:
            frame = wire.decode(text)
        except (ValueError, RecursionError) as exc:
            log.warning("[sim] conn=%s malformed frame: %s", conn.number, exc)
            conn.reply(None, error=wire.BAD_REQUEST, message=f"not a frame: {exc}")
            return
        op, req = frame["op"], frame.get("req")
        if not conn.open and op != "ack":
            return  # a socket being closed: only its acks still count
        try:
            if op not in self._ops:
                raise _bad(f"unknown op {op!r}")
            if op != "hello" and not conn.hello:
                raise _bad("the first frame must be hello")
            self._ops[op](conn, frame)
        except Refused as exc:
            conn.reply(req, error=exc.reason, message=str(exc))
        except Exception:  # a bug here must cost one reply, not the service
            log.exception("[sim] conn=%s op %s failed", conn.number, op)
            conn.reply(req, error=wire.BAD_REQUEST, message="internal error")

    def reject(self, conn: Conn, message: str) -> None:
        conn.reply(None, error=wire.BAD_REQUEST, message=message)

    def closed(self, conn: Conn) -> None:
        """The socket is gone (either side closed it)."""
        conn.open = False
        self.conns.discard(conn)
        if conn.pairing is not None:
            self._end_pairing(conn.pairing)
        acct = self.accounts.get(conn.phone or "")
        if acct is not None:
            if acct.conn is conn:
                log.info("[sim] account=%s client went away", acct.phone)
            acct.release(conn)

    # --- hello, connect ----------------------------------------------------------------

    def _hello(self, conn: Conn, frame: dict) -> None:
        if conn.hello:
            raise _bad("hello was already said on this socket")
        phone = _field(frame, "phone", _optional_text, "a phone number string or null")
        token = _field(frame, "token", _optional_text, "a token string or null")
        conn.hello = True
        acct = self._resolve(phone, token)
        if acct is None:
            self._start_pairing(conn)
        elif not self._refused(conn, acct):
            self.attach(acct, conn, new_pairing=False)

    def _resolve(self, phone: Optional[str], token: Optional[str]) -> Optional[AccountState]:
        phone_gen = self.tokens.get(token or "")
        if phone_gen is not None:
            acct = self.accounts[phone_gen[0]]
            if acct.paired and acct.generation == phone_gen[1]:
                return acct
        acct = self.accounts.get(phone or "")
        return acct if acct is not None and acct.paired else None

    def _refused(self, conn: Conn, acct: AccountState) -> bool:
        """Turn a connection away while the phone is blocked (disconnect window, ban)."""
        remaining = self._blocked_for(acct)
        if remaining is None:
            return False
        if acct.block.kind == "ban":
            conn.tell(pb.temporary_ban_event(acct.block.code, self._whole_real_s(remaining)))
        conn.close(CLOSING_REASONS[acct.block.kind], self.time.real(remaining))
        acct.stats.connections_refused += 1
        return True

    def _blocked_for(self, acct: AccountState) -> Optional[float]:
        remaining = acct.block.until - self.time.now() if acct.block else 0.0
        return remaining if remaining > 0 else None

    def _whole_real_s(self, timeline_s: float) -> int:
        return max(1, math.ceil(self.time.real(timeline_s)))

    def attach(self, acct: AccountState, conn: Conn, *, new_pairing: bool) -> None:
        """Make `conn` the phone's session and bring it up to date."""
        old = acct.conn
        acct.bind(conn, self.time.wall_ms())  # before the old one is released: both count, maxConcurrent shows it
        if old is not None:
            old.tell(pb.stream_replaced_event())
            old.close("stream_replaced", acked=acct.outbox.acked)
            acct.release(old)
            acct.stats.stream_replaced += 1
            log.info("[sim] account=%s stream replaced: conn=%s by conn=%s", acct.phone, old.number, conn.number)
        if new_pairing:
            self._new_session(acct, conn)
        else:
            acct.resend_unacked()
        self._heal_on_connect(acct, new_pairing)
        acct.emit(pb.connected_event())
        if acct.history_due:
            acct.history_due = False
            self._initial_sync(acct)
        if acct.degrade is None:
            acct.emit(pb.offline_sync_completed_event(acct.deliver_backlog()))

    def _new_session(self, acct: AccountState, conn: Conn) -> None:
        acct.outbox.discard()
        acct.generation += 1
        acct.paired, acct.history_due = True, True
        acct.stats.pairings += 1
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (acct.phone, acct.generation)
        device_jid = f"{acct.phone}:{acct.generation}@{pb.PN_SERVER}"
        acct.emit(pb.pair_status_event(True, device_jid, business_name=acct.push_name or ""))
        conn.frame({"op": "paired", "phone": acct.phone, "token": token})
        log.info("[sim] account=%s paired conn=%s", acct.phone, conn.number)

    def _heal_on_connect(self, acct: AccountState, new_pairing: bool) -> None:
        degrade = acct.degrade
        if degrade is None or not (degrade.heals_on == "restart" or new_pairing):
            return
        if degrade.heals_on == "repair":
            acct.drop_backlog()  # held messages are lost, as in the field
        acct.degrade = None
        log.info("[sim] account=%s degradation healed by %s", acct.phone, "pairing" if new_pairing else "restart")

    def _initial_sync(self, acct: AccountState) -> None:
        # One more than fits: initial_sync tells from it whether a chat's history is all in.
        chats = [(c.world_chat, c.history_now(acct.per_chat + 1)) for c in acct.chats.values()]
        for chunk in historysync.initial_sync(chats, acct.per_chat):
            note_id = new_message_id(acct.rng)
            acct.emit(pb.history_sync_notification_event(
                acct.phone, note_id, self.time.wall_ms(), sync_type=chunk.sync_type,
                chunk_order=chunk.chunk_order, progress=chunk.progress))
            acct.emit(pb.history_sync_event(acct.phone, chunk.sync_type, chunk.conversations,
                                            chunk_order=chunk.chunk_order, progress=chunk.progress))

    # --- pairing -----------------------------------------------------------------------

    def _start_pairing(self, conn: Conn) -> None:
        conn.pairing = Pairing(conn)
        self._show_qr(conn.pairing)

    def _show_qr(self, pairing: Pairing) -> None:
        """New codes for a pairing socket; the previous ones expire."""
        for code in pairing.codes:
            self._qr.pop(code, None)
        pairing.codes = tuple(_qr_code() for _ in range(QR_CODES))
        self._qr.update(dict.fromkeys(pairing.codes, pairing))
        pairing.conn.tell(pb.qr_event(pairing.codes))
        pairing.timer = self.timers.after(QR_EVERY_S, lambda: self._show_qr(pairing))

    def _end_pairing(self, pairing: Pairing) -> None:
        if pairing.timer is not None:
            pairing.timer.cancel()
        for code in pairing.codes:
            self._qr.pop(code, None)
        for code in pairing.pair_codes:
            self._pair_codes.pop(code, None)
        pairing.conn.pairing = None

    def scan(self, phone: str, code: str) -> tuple[int, dict]:
        """Someone scans `code` with `phone` (POST /sim/accounts/{phone}/scan): (HTTP status, body)."""
        acct = self.accounts.get(phone)
        if acct is None:
            return 404, {"error": f"no account with phone {phone} in this world"}
        pairing = self._showing(code, phone)
        if pairing is None or not pairing.conn.open:
            return 404, {"error": "no client shows this code (unknown or expired)"}
        remaining = self._blocked_for(acct)
        if remaining is not None:
            return 409, {"error": f"account {phone} is {acct.block.kind} for {self.time.real(remaining):.1f} s"}
        self._end_pairing(pairing)
        self.attach(acct, pairing.conn, new_pairing=True)
        return 200, {"ok": True, "phone": phone}

    def _showing(self, code: str, phone: str) -> Optional[Pairing]:
        """The pairing socket showing `code`: a QR code, or a pairing code for `phone`."""
        if code in self._qr:
            return self._qr[code]
        pairing, for_phone = self._pair_codes.get(_pair_key(code), (None, None))
        return pairing if for_phone == phone else None

    # --- session actions (the timeline's too) ------------------------------------------

    def end_session(self, acct: AccountState, reason: str, retry_after: Optional[float] = None,
                    final_event=None) -> None:
        """Close the live session's socket: `final_event` (seq 0), a closing frame with
        `retry_after` timeline seconds, close."""
        conn = acct.conn
        if conn is None:
            return
        if final_event is not None:
            conn.tell(final_event)
        conn.close(reason, None if retry_after is None else self.time.real(retry_after), acked=acct.outbox.acked)
        acct.release(conn)

    def block(self, acct: AccountState, kind: str, duration: float, code: str = "") -> None:
        """Drop the session and refuse connections for `duration` (disconnect, ban)."""
        until = self.time.now() + duration
        if acct.block is None or acct.block.until < until:
            acct.block = Block(kind, until, code)
        final = pb.temporary_ban_event(code, self._whole_real_s(duration)) if kind == "ban" else None
        self.end_session(acct, CLOSING_REASONS[kind], duration, final)
        log.info("[sim] account=%s %s for %.1f s", acct.phone, kind, duration)

    def logout(self, acct: AccountState, reason: str) -> None:
        """The session is gone: LoggedOut, the phone unpaired, its tokens dead."""
        self.end_session(acct, "logged_out", None, pb.logged_out_event(reason))
        acct.paired, acct.history_due, acct.degrade = False, False, None
        acct.generation += 1
        acct.drop_backlog()
        acct.stats.logouts += 1
        log.info("[sim] account=%s logged out reason=%s", acct.phone, reason)

    # --- the client's operations ----------------------------------------------------------

    def _live(self, conn: Conn) -> AccountState:
        acct = self.accounts.get(conn.phone or "")
        if acct is None or acct.conn is not conn:
            raise Refused(wire.NOT_CONNECTED, "this socket is not a connected session")
        return acct

    def _ack(self, conn: Conn, frame: dict) -> None:
        seq = _field(frame, "seq", _is_count, "an integer >= 0")
        acct = self.accounts.get(conn.phone or "")
        if acct is not None:
            acct.ack(conn, seq)

    def _send(self, conn: Conn, frame: dict) -> None:
        req = _field(frame, "req", _is_count, "an integer >= 0")
        acct = self._live(conn)
        to = frame.get("to")
        if not isinstance(to, str) or not _JID.fullmatch(to):
            raise Refused(wire.INVALID_RECIPIENT, f"not a person's or group's JID: {to!r}")
        text = _field(frame, "text", _is_text, "a non-empty string")
        chosen = _field(frame, "id", lambda v: v is None or (_is_text(v) and _MESSAGE_ID.fullmatch(v)),
                        "a message id (8-64 characters of A-Z 0-9)")
        if to.endswith("@s.whatsapp.net") and to.split("@")[0] in self.world.not_on_whatsapp:
            raise Refused(wire.NOT_ON_WHATSAPP, f"{to.split('@')[0]} is not on WhatsApp")
        chat = acct.chat(to)
        if chosen is not None and chosen in chat.by_id:
            # As on WhatsApp, a message id names one message: sending it again (a client
            # unsure whether its first try went out) delivers nothing new.
            earlier = chat.by_id[chosen].msg
            if not (earlier.from_me and earlier.text == text):
                raise Refused(wire.BAD_REQUEST, f"message id {chosen} is taken by another message")
            acct.stats.sent_again += 1
            conn.reply(req, {"id": earlier.id, "ts": earlier.ts})
            return
        ts_ms = self.time.wall_ms()
        msg = WorldMessage(id=chosen or self._new_id(acct, chat), from_me=True, ts=ts_ms // 1000, text=text,
                           status="sent")
        chat.add(msg, SENT, ts_ms)
        acct.stats.sent += 1
        conn.reply(req, {"id": msg.id, "ts": msg.ts})
        if chat.auto_receipts:
            for kind, delay in RECEIPT_AFTER_S:
                self.timers.after(delay, lambda kind=kind: acct.receipt(chat.jid, [msg.id], kind, self.wall_s()))

    def _new_id(self, acct: AccountState, chat: ChatState) -> str:
        while (mid := new_message_id(acct.rng)) in chat.by_id:
            pass
        return mid

    def _mark_read(self, conn: Conn, frame: dict) -> None:
        req = _field(frame, "req", _is_count, "an integer >= 0")
        acct = self._live(conn)
        _field(frame, "chat", _is_text, "a chat JID")
        _field(frame, "ids", lambda v: isinstance(v, list) and all(map(_is_text, v)), "a list of message ids")
        acct.stats.mark_read += 1
        conn.reply(req, {})

    def _history(self, conn: Conn, frame: dict) -> None:
        req = _field(frame, "req", _is_count, "an integer >= 0")
        acct = self._live(conn)
        chat_jid = _field(frame, "chat", _is_text, "a chat JID")
        anchor = _field(frame, "anchor", _is_text, "the id of the anchor message")
        count = min(_field(frame, "count", lambda v: _is_count(v) and v > 0, "an integer >= 1"),
                    historysync.ON_DEMAND_MAX)
        direction = _field(frame, "direction", lambda v: v in (None, *_DIRECTIONS),
                           " or ".join(map(repr, _DIRECTIONS))) or wire.HISTORY_BEFORE
        chat = acct.chats.get(chat_jid)
        found = _DIRECTIONS[direction](chat, anchor, count) if chat else None
        messages = found or []
        acct.stats.history_requests += 1
        conn.reply(req, {"messages": len(messages)})
        conversations = []
        if chat:
            oldest = messages[0].id if messages else anchor
            end = historysync.on_demand_end(direction, found is not None and chat.is_first(oldest))
            conversations.append(historysync.Conversation(chat.world_chat, messages, end))
        acct.emit(pb.history_sync_event(acct.phone, "ON_DEMAND", conversations))

    def _pair_phone(self, conn: Conn, frame: dict) -> None:
        req = _field(frame, "req", _is_count, "an integer >= 0")
        if conn.pairing is None:
            raise _bad("pair_phone works only while pairing (the client shows QR codes)")
        phone = _field(frame, "phone", lambda v: isinstance(v, str) and bool(_PHONE.fullmatch(v)),
                       "a phone number of digits")
        if phone not in self.accounts:
            raise _bad(f"no account with phone {phone} in this world")
        code = "".join(secrets.choice(PAIR_CODE_ALPHABET) for _ in range(8))
        conn.pairing.pair_codes.append(code)
        self._pair_codes[code] = (conn.pairing, phone)
        conn.reply(req, {"code": f"{code[:4]}-{code[4:]}"})

    def _logout_op(self, conn: Conn, frame: dict) -> None:
        req = _field(frame, "req", _is_count, "an integer >= 0")
        acct = self._live(conn)
        conn.reply(req, {})
        self.logout(acct, "LOGGED_OUT")

    # --- views ---------------------------------------------------------------------------

    def world_json(self, phone: Optional[str] = None) -> dict:
        return {"seed": self.world.seed,
                "accounts": [a.world_json() for a in self.accounts.values() if phone in (None, a.phone)]}

    def stats_json(self) -> dict:
        now = self.time.now()
        accounts = {a.phone: a.stats_json(now) for a in self.accounts.values()}
        totals: dict[str, int] = {}
        for stats in accounts.values():
            for key, value in stats.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        totals["maxConcurrent"] = max((s["maxConcurrent"] for s in accounts.values()), default=0)
        return {"accounts": accounts, "totals": totals, "sockets": len(self.conns), "pairing": len(
            {id(p) for p in self._qr.values()})}


def _qr_code() -> str:
    """Shaped like whatsmeow's: ref, noise key, identity key, adv secret."""
    keys = ",".join(base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(3))
    return f"2@{secrets.token_urlsafe(24)},{keys}"


def _pair_key(code: str) -> str:
    return code.replace("-", "").strip().upper()
