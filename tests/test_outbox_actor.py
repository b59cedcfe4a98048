"""The OutboxActor on its own: a real actor, a real SqliteStore, a FakeClock, and a session
whose sends do what each test scripts (the transport outcomes of SPEC §5). The end-to-end
tests (test_e2e_outbox.py) cover the same paths through real processes and the simulator;
here are the ones the simulator cannot produce: a transport that cannot send under our
id (neonize 0.5.2), ambiguous failures, a store down at the wrong moment, expiry."""
from __future__ import annotations

from collections import deque
from typing import Optional

import pytest

from wasync.actors.outbox import OutboxActor, OutboxDeps
from wasync.actors.outbox_protocol import Linked, Poke
from wasync.actors.slot import SessionSlot
from wasync.runtime.clock import FakeClock
from wasync.runtime.metrics import Metrics
from wasync.runtime.outbox import OutboxItem, OutboxStatus, Claim
from wasync.runtime.store.base import Fence, StoreError
from wasync.runtime.store.sqlite import SqliteStore
from wasync.runtime.ticker import FakeTicker
from wasync.runtime.transport.session import (
    InvalidRecipient, NotConnected, NotOnWhatsApp, Refused, SendResult, SessionError,
)

CHAT = "15552223333@s.whatsapp.net"


class ScriptedSends:
    """A session whose send_text answers from a script: an exception to raise, or a
    WhatsApp id to answer with (None: answer with the id asked for, or a fresh one)."""

    def __init__(self):
        self.script: deque = deque()
        self.calls: list[tuple[str, Optional[str]]] = []

    def send_text(self, to_jid, text, message_id=None, timeout_s=30.0):
        self.calls.append((text, message_id))
        step = self.script.popleft() if self.script else None
        if isinstance(step, BaseException):
            raise step
        return SendResult(message_id=step or message_id or f"3EBWA{len(self.calls):04d}", ts_ms=1_763_900_000_000)


class FlakyStore(SqliteStore):
    """A real SqliteStore that refuses the next `fail_records` records of a sent message."""

    fail_records = 0

    def record_outbox_sent(self, *args, **kwargs):
        if self.fail_records:
            self.fail_records -= 1
            raise StoreError("store unreachable (injected)")
        return super().record_outbox_sent(*args, **kwargs)


@pytest.fixture
def rig(tmp_path):
    store = FlakyStore(tmp_path / "store.db")
    clock = FakeClock()
    ticker = FakeTicker(clock).start()
    lease = store.acquire_lease("a1", "i1", None, clock.wall_ms(), 60_000)
    session, slot = ScriptedSends(), SessionSlot("a1")
    slot.put(session)
    metrics = Metrics()
    deps = OutboxDeps(store, clock, ticker, metrics, poll_ms=5_000, expire_ms=3_600_000)
    actors = []

    def start(resend_safe: bool):
        ref = OutboxActor.start("a1", Fence("i1", lease.epoch), slot, deps, resend_safe)
        actors.append(ref)
        return ref

    class Rig:
        pass

    r = Rig()
    r.store, r.clock, r.session, r.start, r.metrics, r.epoch = store, clock, session, start, metrics, lease.epoch
    r.ticker = ticker
    yield r
    for ref in actors:
        ref.stop()
    ticker.stop()
    store.close()


def queue(rig, n: int, text: str = None) -> OutboxItem:
    item = OutboxItem(id=f"3EB0Q{n:04d}", account_id="a1", to_jid=CHAT, text=text or f"text {n}",
                      created_at_ms=rig.clock.wall_ms())
    return rig.store.enqueue_outbox(item, rig.clock.wall_ms())[0]


def status(rig, item: OutboxItem) -> OutboxItem:
    return rig.store.get_outbox(item.id)


def results(rig) -> dict:
    return {s.labels["result"]: s.value for m in rig.metrics.outbox_results.collect() for s in m.samples
            if s.name.endswith("_total")}


def test_sends_in_order_only_while_connected(rig):
    first, second = queue(rig, 1), queue(rig, 2)
    ref = rig.start(resend_safe=True)
    ref.ask(Poke())
    assert rig.session.calls == []  # not connected yet: nothing is claimed
    assert status(rig, first).status is OutboxStatus.QUEUED
    ref.ask(Linked(True))
    assert rig.session.calls == [("text 1", first.id), ("text 2", second.id)]
    assert status(rig, first).status is OutboxStatus.SENT and status(rig, second).wa_message_id == second.id
    assert results(rig)["sent"] == 2


def test_certainly_not_sent_is_retried_later_and_never_twice(rig):
    item = queue(rig, 1)
    rig.session.script.extend([NotConnected("socket closed"), None])
    ref = rig.start(resend_safe=False)
    ref.ask(Linked(True))
    retried = status(rig, item)
    assert retried.status is OutboxStatus.QUEUED and "not_connected" in retried.error
    ref.ask(Linked(True))  # back, but the retry is not due yet
    assert len(rig.session.calls) == 1
    rig.ticker.advance(2.0)  # the retry's own timer, not the 5 s poll
    assert status(rig, item).status is OutboxStatus.SENT and status(rig, item).attempts == 2
    assert len(rig.session.calls) == 2 and results(rig)["retry"] == 1


@pytest.mark.parametrize("refusal,reason", [(InvalidRecipient("no such user"), "invalid_recipient"),
                                            (NotOnWhatsApp("15559990000 is not on WhatsApp"), "not_on_whatsapp"),
                                            (Refused("message id taken by another message"), "refused")])
def test_a_refused_send_fails_for_good(rig, refusal, reason):
    item = queue(rig, 1)
    rig.session.script.append(refusal)
    rig.start(resend_safe=True).ask(Linked(True))
    failed = status(rig, item)
    assert failed.status is OutboxStatus.FAILED and reason in failed.error
    assert len(rig.session.calls) == 1
    doc = rig.store.get_message("a1", CHAT, item.id)
    assert (doc["status"], doc["sendError"]) == ("failed", failed.error)


@pytest.mark.parametrize("resend_safe,expected", [(True, OutboxStatus.QUEUED), (False, OutboxStatus.UNKNOWN)])
def test_an_ambiguous_failure_is_retried_only_where_a_resend_is_the_same_message(rig, resend_safe, expected):
    item = queue(rig, 1)
    rig.session.script.append(SessionError("send: no answer within 30 s"))
    rig.start(resend_safe=resend_safe).ask(Linked(True))
    assert status(rig, item).status is expected
    if expected is OutboxStatus.UNKNOWN:
        assert "may have been sent" in status(rig, item).error


@pytest.mark.parametrize("resend_safe", [True, False])
def test_an_orphan_of_a_dead_claimer(rig, resend_safe):
    item = queue(rig, 1)
    # A predecessor claimed it and died (same lease epoch: the account actor was restarted).
    rig.store.claim_outbox("a1", Claim("i1", rig.epoch, "dead-actor"), rig.clock.wall_ms(), 10, resend_safe)
    rig.start(resend_safe=resend_safe).ask(Linked(True))
    if resend_safe:
        assert rig.session.calls == [("text 1", item.id)]  # the same id: WhatsApp sees one message
        assert status(rig, item).status is OutboxStatus.SENT
    else:
        assert rig.session.calls == []  # never resent blindly
        assert status(rig, item).status is OutboxStatus.UNKNOWN and results(rig)["unknown"] == 1


def test_a_send_the_store_could_not_record_is_recorded_later_not_resent(rig):
    item = queue(rig, 1)
    rig.store.fail_records = 2
    ref = rig.start(resend_safe=False)
    ref.ask(Linked(True))
    assert status(rig, item).status is OutboxStatus.SENDING and len(rig.session.calls) == 1
    ref.ask(Poke())  # still down
    ref.ask(Poke())
    assert status(rig, item).status is OutboxStatus.SENT
    assert len(rig.session.calls) == 1


def test_sent_under_whatsapps_own_id(rig):
    item = queue(rig, 1)
    rig.session.script.append("3EB0FROMWA01")
    rig.start(resend_safe=False).ask(Linked(True))
    assert rig.session.calls == [("text 1", None)]  # this transport cannot take our id
    assert status(rig, item).wa_message_id == "3EB0FROMWA01"
    assert rig.store.get_message("a1", CHAT, item.id) is None
    assert rig.store.get_message("a1", CHAT, "3EB0FROMWA01")["outboxId"] == item.id


def test_an_item_queued_too_long_ago_expires(rig):
    item = queue(rig, 1)
    rig.clock.advance(3_601)
    rig.start(resend_safe=True).ask(Linked(True))
    assert rig.session.calls == []
    assert status(rig, item).status is OutboxStatus.FAILED and "expired" in status(rig, item).error


def test_only_the_item_in_the_transport_call_is_claimed(rig):
    """A successor treats whatever this actor holds as possibly sent: so it holds one item
    at a time, the one in the transport call, and a restart mid-send orphans only that."""
    items = [queue(rig, n) for n in range(3)]
    seen = []
    send = rig.session.send_text

    def observing(to_jid, text, message_id=None, timeout_s=30.0):
        seen.append([rig.store.get_outbox(i.id).status for i in items])
        return send(to_jid, text, message_id, timeout_s)

    rig.session.send_text = observing
    rig.start(resend_safe=False).ask(Linked(True))
    S, Q, D = OutboxStatus.SENT, OutboxStatus.QUEUED, OutboxStatus.SENDING
    assert seen == [[D, Q, Q], [S, D, Q], [S, S, D]]
