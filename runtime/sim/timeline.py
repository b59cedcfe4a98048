"""Timeline events (docs/simulator.md): the world file's, scheduled when the service starts,
and those injected through POST /sim/events. Each kind is one small function over the
Simulation (engine.py) and the account's state (state.py).

Choices (reviewers take note):
- An injected event with `at` > 0 happens `at` timeline seconds after the request.
- A message already in its chat (same id) is not posted twice: injected twice, the
  second is logged and ignored.
- `degrade`: receipts and answers to history requests still flow (they are not live
  messages); a protocol message (app-state key share) is sent at once and then every
  PROTOCOL_EVERY_S while a client is connected.
- `traffic` sends floor(rate × for) messages, the first at once, spread over the
  account's chats by a seeded rng; groups name a participant seen in the chat (or a
  made-up one).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable

from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.engine import Simulation
from wasync.runtime.sim.state import AccountState, ChatState, Degrade
from wasync.runtime.sim.world import TimelineEvent, WorldMessage, new_message_id, parse_events

log = logging.getLogger("wasync.sim")

PROTOCOL_EVERY_S = 2.0
_WORDS = ("hi ok thanks order delivery today tomorrow price invoice menu table please confirm address "
          "ready great see you at the shop two boxes paid sent photo new stock open sorry late").split()


def schedule(sim: Simulation, events: tuple[TimelineEvent, ...], *, delay_from_now: bool = False) -> None:
    """World timeline: `at` after the start. Injected: `at` after now (0 = applied at once)."""
    for event in events:
        if delay_from_now and event.at <= 0:
            apply(sim, event)
        elif delay_from_now:
            sim.timers.after(event.at, lambda event=event: apply(sim, event))
        else:
            sim.timers.at(event.at, lambda event=event: apply(sim, event))


def inject(sim: Simulation, data: Any) -> int:
    """POST /sim/events: validate (raises WorldError) and apply; how many events."""
    events = parse_events(data, sim.world, rng=sim.event_rng)
    schedule(sim, events, delay_from_now=True)
    return len(events)


def apply(sim: Simulation, event: TimelineEvent) -> None:
    acct = sim.accounts[event.account]
    log.debug("[sim] account=%s timeline %s", acct.phone, event.event)
    _HANDLERS[event.event](sim, acct, event)


def _message(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    chat, msg = acct.chat(event.chat), event.message
    if msg.id in chat.by_id:
        log.warning("[sim] account=%s message %s is already in %s; ignored", acct.phone, msg.id, chat.jid)
        return
    ts_ms = msg.ts * 1000 if msg.ts is not None else sim.time.wall_ms()
    acct.post_live(chat, replace(msg, ts=ts_ms // 1000), ts_ms, offline=event.offline)


def _receipt(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    acct.receipt(event.chat, event.ids, event.receipt_type, sim.wall_s())


def _disconnect(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    sim.block(acct, "disconnect", event.duration)


def _ban(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    sim.block(acct, "ban", event.duration, event.code or "SENT_TOO_MANY_SAME_MESSAGE")


def _logout(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    sim.logout(acct, event.reason or "LOGGED_OUT")


def _degrade(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    degrade = Degrade(sim.time.now() + event.duration, event.heals_on or "restart")
    acct.degrade = degrade
    sim.timers.at(degrade.until, lambda: _degrade_expired(acct, degrade))
    _protocol_tick(sim, acct, degrade)
    log.info("[sim] account=%s degraded for %.1f s, heals on %s", acct.phone, event.duration, degrade.heals_on)


def _protocol_tick(sim: Simulation, acct: AccountState, degrade: Degrade) -> None:
    if acct.degrade is not degrade:
        return
    if acct.conn is not None:
        acct.emit(pb.app_state_key_share_event(acct.phone, new_message_id(acct.rng), sim.time.wall_ms()))
    sim.timers.after(PROTOCOL_EVERY_S, lambda: _protocol_tick(sim, acct, degrade))


def _degrade_expired(acct: AccountState, degrade: Degrade) -> None:
    if acct.degrade is not degrade:
        return  # healed or replaced meanwhile
    acct.degrade = None
    if acct.conn is not None:
        acct.deliver_backlog()
    log.info("[sim] account=%s degradation over", acct.phone)


def _traffic(sim: Simulation, acct: AccountState, event: TimelineEvent) -> None:
    count, interval = int(event.rate * event.duration + 1e-9), 1.0 / event.rate
    chats = list(acct.chats.values())
    start = sim.time.now()

    def tick(i: int) -> None:
        _synthetic_message(sim, acct, acct.rng.choice(chats))
        if i + 1 < count:
            sim.timers.at(start + (i + 1) * interval, lambda: tick(i + 1))

    if count and chats:
        tick(0)


def _synthetic_message(sim: Simulation, acct: AccountState, chat: ChatState) -> None:
    rng = acct.rng
    while (mid := new_message_id(rng)) in chat.by_id:
        pass
    sender = None
    if chat.group:
        sender = chat.last_sender or f"1555{rng.randrange(10**7):07d}@{pb.PN_SERVER}"
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 8))).capitalize()
    ts_ms = sim.time.wall_ms()
    msg = WorldMessage(id=mid, ts=ts_ms // 1000, text=text, sender=sender, push_name=None if chat.group else chat.name)
    acct.post_live(chat, msg, ts_ms)


_HANDLERS: dict[str, Callable[[Simulation, AccountState, TimelineEvent], None]] = {
    "message": _message, "receipt": _receipt, "disconnect": _disconnect, "degrade": _degrade,
    "logout": _logout, "ban": _ban, "traffic": _traffic,
}
