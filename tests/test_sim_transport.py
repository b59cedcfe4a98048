"""The simulator's transport client (Session port) against a real `wasync sim` process."""
from __future__ import annotations

import threading
import time

import pytest

from simproc import SimProcess, wait_for
from wasync.runtime import model as m
from wasync.runtime.backoff import Backoff
from wasync.runtime.transport.normalize import normalize
from wasync.runtime.transport.session import (
    HistoryDirection, InvalidRecipient, MessageRef, NotConnected, NotOnWhatsApp, SessionError,
)
from wasync.runtime.transport.simulated import SimulatedTransport

PHONE, NEW = "15550001111", "15550002222"
ALICE = "15552223333@s.whatsapp.net"
TS = 1_763_900_000
WORLD = {"seed": 3, "notOnWhatsApp": ["15559990000"], "accounts": [
    {"phone": PHONE, "pushName": "Shop A", "initialSyncPerChat": 50, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [
            {"id": f"H{n:03d}", "ts": TS + n, "text": f"history {n}"} for n in range(80)]}]},
    {"phone": NEW, "pushName": "Shop B", "paired": False}]}


class Sink:
    """The spool stand-in: records events, and can refuse one to test the ack rule."""

    def __init__(self, account="a1"):
        self.account = account
        self.events: list = []
        self.refuse_next_message = False
        self.lock = threading.Lock()

    def __call__(self, kind: str, raw: bytes) -> None:
        if kind == "Message" and self.refuse_next_message:
            self.refuse_next_message = False
            raise OSError("disk full (test)")
        with self.lock:
            self.events.extend(normalize(self.account, kind, raw))

    def of(self, cls) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, cls)]

    def texts(self) -> set[str]:
        return {e.body for e in self.of(m.Message)} | {msg.body for b in self.of(m.HistoryBatch) for msg in b.messages}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    proc = SimProcess(WORLD, tmp_path_factory.mktemp("sim"), speed=20).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def transport(sim, tmp_path):
    t = SimulatedTransport("127.0.0.1", sim.port, tmp_path / "sessions", backoff=Backoff(initial_ms=50, max_ms=500))
    yield t
    t.close()


def open_started(transport, sink, account="a1", phone=PHONE):
    session = transport.open(account, phone, sink)
    session.start()
    return session


def test_paired_account_connects_gets_history_and_acks(sim, transport):
    sink = Sink()
    session = open_started(transport, sink)
    wait_for(lambda: sink.of(m.Connected), what="Connected")
    batches = wait_for(lambda: sink.of(m.HistoryBatch), what="history sync")
    assert sum(len(b.messages) for b in batches) == 50  # the newest initialSyncPerChat
    assert {b.sync_type for b in batches} <= {m.HistorySyncType.INITIAL_BOOTSTRAP, m.HistorySyncType.RECENT}
    wait_for(lambda: sim.stats()["accounts"][PHONE]["unacked"] == 0, what="every event acknowledged")
    # on-demand history walks back from the oldest message we hold
    assert session.capabilities.history_after is True
    session.request_history(ALICE, MessageRef("H030", (TS + 30) * 1000, False), 50)
    on_demand = wait_for(lambda: [b for b in sink.of(m.HistoryBatch)
                                  if b.sync_type is m.HistorySyncType.ON_DEMAND], what="ON_DEMAND batch")
    assert sorted(msg.id for msg in on_demand[0].messages) == [f"H{n:03d}" for n in range(30)]
    assert [t.history_complete for t in on_demand[0].threads] == [True]  # H000 came: nothing older
    assert {msg.sync_source for msg in on_demand[0].messages} == {m.SyncSource.BACKFILL}
    # ... and forward from an anchor, for a trailing gap
    session.request_history(ALICE, MessageRef("H070", (TS + 70) * 1000, False), 5, HistoryDirection.AFTER)
    after = wait_for(lambda: [b for b in sink.of(m.HistoryBatch)
                              if b.sync_type is m.HistorySyncType.ON_DEMAND][1:], what="second ON_DEMAND batch")
    assert sorted(msg.id for msg in after[0].messages) == [f"H{n:03d}" for n in range(71, 76)]
    assert [t.history_complete for t in after[0].threads] == [None]
    session.stop()


def test_send_reaches_the_world_and_receipts_come_back(sim, transport):
    sink = Sink()
    session = open_started(transport, sink)
    wait_for(lambda: session.connected, what="connected")
    sent = session.send_text(ALICE, "your order is ready")
    assert sent.message_id.startswith("3EB0") and sent.ts_ms > 0
    read = wait_for(lambda: [r for r in sink.of(m.Receipt)
                             if sent.message_id in r.message_ids and r.kind is m.ReceiptKind.READ], what="read")
    assert read
    chat = next(c for a in sim.world()["accounts"] if a["phone"] == PHONE for c in a["chats"] if c["jid"] == ALICE)
    mine = next(msg for msg in chat["messages"] if msg["id"] == sent.message_id)
    assert mine["via"] == "sent" and mine["status"] == "read" and mine["text"] == "your order is ready"
    with pytest.raises(InvalidRecipient):
        session.send_text("not-a-jid", "x")
    session.mark_read(ALICE, ALICE, ["H079"], TS * 1000)
    session.stop()
    with pytest.raises(NotConnected):
        session.send_text(ALICE, "after stop")


def test_a_send_under_a_chosen_id_is_one_message_however_often_it_is_sent(sim, transport):
    session = open_started(transport, Sink())
    wait_for(lambda: session.connected, what="connected")
    assert session.capabilities.chosen_message_ids
    before = sim.stats()["accounts"][PHONE]
    first = session.send_text(ALICE, "once only", message_id="3EB0C0FFEE0001")
    again = session.send_text(ALICE, "once only", message_id="3EB0C0FFEE0001")
    assert first == again and first.message_id == "3EB0C0FFEE0001"
    stats = sim.stats()["accounts"][PHONE]
    assert (stats["sent"] - before["sent"], stats["sentAgain"] - before["sentAgain"]) == (1, 1)
    chat = next(c for a in sim.world()["accounts"] if a["phone"] == PHONE for c in a["chats"] if c["jid"] == ALICE)
    assert [msg["id"] for msg in chat["messages"]].count("3EB0C0FFEE0001") == 1
    with pytest.raises(SessionError):  # the id names another message
        session.send_text(ALICE, "something else", message_id="3EB0C0FFEE0001")
    with pytest.raises(NotOnWhatsApp):
        session.send_text("15559990000@s.whatsapp.net", "hello?")
    session.stop()


def test_disconnect_is_reported_and_offline_messages_follow_the_reconnect(sim, transport):
    sink = Sink()
    session = open_started(transport, sink)
    wait_for(lambda: session.connected, what="connected")
    sim.inject({"account": PHONE, "event": "disconnect", "for": 10.0})  # 0.5 s at speed 20
    wait_for(lambda: sink.of(m.Disconnected), what="Disconnected reported by the client")
    sim.inject({"account": PHONE, "event": "message", "chat": ALICE, "text": "while you were away"})
    wait_for(lambda: "while you were away" in sink.texts(), what="offline message after reconnect")
    wait_for(lambda: sink.of(m.OfflineSyncCompleted), what="OfflineSyncCompleted")
    assert len(sink.of(m.Connected)) >= 2
    session.stop()


def test_an_event_the_spool_refuses_is_not_acknowledged_and_comes_again(sim, transport):
    sink = Sink()
    session = open_started(transport, sink)
    wait_for(lambda: session.connected, what="connected")
    sink.refuse_next_message = True
    sim.inject({"account": PHONE, "event": "message", "chat": ALICE, "text": "must not be lost"})
    wait_for(lambda: "must not be lost" in sink.texts(), what="redelivery after the refusal")
    session.stop()


def test_stream_replaced_stops_the_older_session_for_good(sim, transport):
    first_sink, second_sink = Sink(), Sink()
    first = open_started(transport, first_sink)
    wait_for(lambda: first.connected, what="first connected")
    before = sim.stats()["accounts"][PHONE]
    second = open_started(transport, second_sink, account="a1-elsewhere")
    wait_for(lambda: first_sink.of(m.StreamReplaced), what="StreamReplaced on the older session")
    wait_for(lambda: second.connected, what="second connected")
    after = sim.stats()["accounts"][PHONE]
    assert after["streamReplaced"] == before["streamReplaced"] + 1
    wait_for(lambda: not first.connected, what="the older socket closed")
    opened = after["connectionsOpened"]
    time.sleep(1.0)  # longer than its reconnect backoff: it would have come back by now
    assert sim.stats()["accounts"][PHONE]["connectionsOpened"] == opened  # it did not fight back
    assert not first.connected
    first.stop()
    second.stop()


def test_qr_pairing_then_resume_without_pairing(sim, transport):
    sink = Sink("b1")
    session = open_started(transport, sink, account="b1", phone=None)
    qr = wait_for(lambda: sink.of(m.QrCode), what="a QR code")[0]
    assert sim.scan(NEW, "not-a-displayed-code") == 404
    assert sim.scan(NEW, qr.codes[0]) == 200
    wait_for(lambda: sink.of(m.PairSuccess), what="PairSuccess")
    wait_for(lambda: session.connected, what="connected after pairing")
    assert (transport.sessions_path / "b1.sim.json").exists()
    session.stop()
    again = Sink("b1")
    resumed = open_started(transport, again, account="b1", phone=None)
    wait_for(lambda: resumed.connected, what="resumed from the kept session")
    assert not again.of(m.QrCode)
    resumed.logout()
    assert not (transport.sessions_path / "b1.sim.json").exists()
    resumed.stop()


def test_more_sessions_than_an_http_connection_pool_holds(tmp_path):
    # aiohttp pools 100 connections by default; websockets hold theirs for life.
    phones = [f"1555{n:07d}" for n in range(120)]
    world = {"seed": 5, "accounts": [{"phone": p, "initialSyncPerChat": 1, "chats": []} for p in phones]}
    sim = SimProcess(world, tmp_path / "sim", speed=1).start()
    transport = SimulatedTransport("127.0.0.1", sim.port, tmp_path / "sessions")
    try:
        sessions = [open_started(transport, Sink(f"a{n}"), account=f"a{n}", phone=p) for n, p in enumerate(phones)]
        wait_for(lambda: all(s.connected for s in sessions), timeout_s=30, what="all 120 connected")
        for s in sessions:
            s.stop()
    finally:
        transport.close()
        sim.stop()


def test_a_session_stopped_while_it_connects_leaves_no_socket_behind(sim, transport):
    """stop() while the websocket connect is still in flight (the simulator frozen): the
    connect must not complete later into a socket nobody reads (it would kick the
    account's next owner with StreamReplaced)."""
    import os
    import signal

    before = sim.stats()["accounts"][PHONE]
    os.kill(sim.proc.pid, signal.SIGSTOP)
    try:
        session = open_started(transport, Sink(), account="zombie")
        time.sleep(0.3)  # connecting: the frozen simulator takes the TCP connection but never answers
        started = time.monotonic()
        session.stop()
        stop_took = time.monotonic() - started
    finally:
        os.kill(sim.proc.pid, signal.SIGCONT)
    time.sleep(1.5)  # a connect that slipped through would be done by now
    after = sim.stats()["accounts"][PHONE]
    assert stop_took < 5, stop_took
    assert after["connectionsOpened"] == before["connectionsOpened"] and not after["connected"], after


def test_with_a_registration_time_connects_take_turns_as_neonize_registrations_do(sim, tmp_path):
    transport = SimulatedTransport("127.0.0.1", sim.port, tmp_path / "sessions", registration_s=0.3)
    try:
        sinks = [Sink(f"r{n}") for n in range(3)]
        started = time.monotonic()
        sessions = [open_started(transport, sink, account=f"r{n}") for n, sink in enumerate(sinks)]
        wait_for(lambda: all(sink.of(m.Connected) for sink in sinks), timeout_s=10, what="all three connected")
        assert time.monotonic() - started >= 0.9  # three turns of 0.3 s, one after the other
        for session in sessions:
            session.stop()
    finally:
        transport.close()
