"""Spool, writer and account actor on real SQLite files and a real simulator process."""
from __future__ import annotations

import sqlite3
import threading

import pykka
import pytest

from simproc import SimProcess, wait_for
from store_fixtures import msg
from wasync.actors.account import AccountActor
from wasync.actors.writer import IngestBatch, StoreWriterActor, merge_account_fields
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import thread_id
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.worldmodel import Chat, WorldMessage
from wasync.runtime.spool import Spool
from wasync.runtime.store.schema import Increment
from wasync.runtime.store.sqlite import SqliteStore
from wasync.runtime.transport.simulated import SimulatedTransport

PHONE = "15550001111"
ALICE = "15552223333@s.whatsapp.net"


@pytest.fixture(autouse=True)
def no_actor_left_behind():
    yield
    pykka.ActorRegistry.stop_all(timeout=20)


class UnavailableTransport:
    """A transport whose sessions can never start (a broken install, a missing library)."""

    def __init__(self, reason: str):
        self.reason = reason

    def open(self, account_id, phone, sink):
        raise RuntimeError(self.reason)


def test_account_fields_merge_adds_counters():
    into = {"historySyncCount": Increment(1), "status": "connecting"}
    merge_account_fields(into, {"historySyncCount": Increment(2), "status": "connected"})
    assert into == {"historySyncCount": Increment(3), "status": "connected"}


# --- writer: a real store failure keeps everything ----------------------------------------


def test_writer_keeps_rows_through_a_store_failure_and_flushes_after(tmp_path):
    store = SqliteStore(tmp_path / "store.db", busy_timeout_ms=50)
    spool = Spool(tmp_path / "spool.db")
    board, metrics = Board("i1", "sqlite", Clock()), Metrics()
    writer = StoreWriterActor.start(store, spool, board, metrics, Clock())
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: every write fails
    seq = spool.append("a1", "Message", b"raw")
    writer.tell(IngestBatch("a1", seqs=[seq], messages=[msg(id="W1", account="a1")]))
    wait_for(lambda: not board.snapshot().store.connected, what="store reported down")
    assert spool.depth() == 1  # not done: the store never confirmed it
    assert metrics.store_errors.labels(op="messages")._value.get() >= 1
    blocker.execute("ROLLBACK")
    wait_for(lambda: spool.depth() == 0, timeout_s=20, what="flush after the store came back")
    assert board.snapshot().store.connected
    assert store.get_message("a1", "15552223333@s.whatsapp.net", "W1")["id"] == "W1"
    writer.stop()
    store.close()


# --- account actor ------------------------------------------------------------------------


class Parts:
    """One account's real surroundings: store, spool, board, metrics, writer, transport."""

    def __init__(self, tmp_path, sim_port=None):
        self.store = SqliteStore(tmp_path / "store.db")
        self.spool = Spool(tmp_path / "spool.db")
        self.board, self.metrics, self.clock = Board("i1", "sqlite", Clock()), Metrics(), Clock()
        self.writer = StoreWriterActor.start(self.store, self.spool, self.board, self.metrics, self.clock)
        self.transport = SimulatedTransport("127.0.0.1", sim_port, tmp_path / "sessions") if sim_port else None

    def account(self, account_id, phone, *, dry_run=False, sessions=None, supervisor=None, slot=None):
        return AccountActor.start(account_id, phone, sessions=sessions or self.transport, spool=self.spool,
                                  writer=self.writer, board=self.board, metrics=self.metrics, clock=self.clock,
                                  dry_run_history=dry_run, supervisor=supervisor, slot=slot)

    def close(self):
        pykka.ActorRegistry.stop_all(timeout=20)
        if self.transport:
            self.transport.close()
        self.store.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    world = {"seed": 1, "accounts": [{"phone": PHONE, "initialSyncPerChat": 5, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [{"id": "H1", "ts": 1763900000, "text": "old"}]}]}]}
    proc = SimProcess(world, tmp_path_factory.mktemp("sim"), speed=10).start()
    yield proc
    proc.stop()


def test_account_replays_left_rows_first_and_quarantines_garbage(sim, tmp_path):
    parts = Parts(tmp_path, sim.port)
    store, spool, metrics = parts.store, parts.spool, parts.metrics
    # what an earlier life left behind: one good live message, one unreadable event
    left = WorldMessage(id="L1", from_me=False, ts=1763900100, type="text", text="from before the crash")
    kind, raw = pb.wire(pb.message_event(PHONE, ALICE, left))
    spool.append("a1", kind, raw)
    bad = spool.append("a1", "Message", b"\xff\xfe not a protobuf")
    actor = parts.account("a1", PHONE)
    wait_for(lambda: store.get_message("a1", ALICE, "L1"), what="the replayed message")
    wait_for(lambda: store.get_message("a1", ALICE, "H1"), what="history after the replay")
    assert spool.quarantined("a1")[0][0] == bad
    assert metrics.normalize_errors._value.get() == 1
    wait_for(lambda: spool.depth() == 0, what="everything done")
    state = actor.ask("state")
    assert state.connected and state.real_messages >= 1
    thread = store.get_thread(thread_id("a1", ALICE))
    assert thread["lastMessagePreview"] == "from before the crash"
    parts.close()


def test_history_dry_run_counts_and_writes_no_messages(sim, tmp_path):
    # The history chunk is put in the spool directly, as if the transport had just taken it.
    parts = Parts(tmp_path, sim.port)
    store, spool = parts.store, parts.spool
    history = pb.history_sync_event(PHONE, "RECENT", [(
        Chat(jid=ALICE, name="Alice", group=False, auto_receipts=True, messages=()),
        [WorldMessage(id="D1", from_me=False, ts=1763900000, type="text", text="dry")])])
    kind, raw = pb.wire(history)
    spool.append("a2", kind, raw)
    parts.account("a2", None, dry_run=True)
    wait_for(lambda: (store.get_account("a2") or {}).get("lastHistorySyncResult"), what="history result")
    result = store.get_account("a2")["lastHistorySyncResult"]
    assert result == {"saved": 0, "skipped": 0, "errors": 0, "total": 1, "dryRun": True}
    assert store.get_message("a2", ALICE, "D1") is None
    parts.close()


def test_a_session_that_cannot_start_is_reported_not_silent(tmp_path, caplog):
    from wasync.actors.startgate import StartGate
    from wasync.actors.supervisor import SupervisorActor

    parts = Parts(tmp_path)
    store, board = parts.store, parts.board
    transport = UnavailableTransport("no transport in this build")

    def make_child(account_id, phone, supervisor, slot, fresh_pairing=False):
        return parts.account(account_id, phone, sessions=transport, supervisor=supervisor, slot=slot)

    gate = StartGate(50.0, parts.clock)
    supervisor = SupervisorActor.start(make_child, lambda: [{"accountId": "x1"}], board, parts.metrics, gate)
    supervisor.tell("reconcile")
    wait_for(lambda: (store.get_account("x1") or {}).get("lastRealtimeError"), what="the error in the account doc")
    doc = store.get_account("x1")
    assert doc["status"] == "disconnected" and "no transport in this build" in doc["lastRealtimeError"]
    assert board.account("x1").status.value == "disconnected"
    wait_for(lambda: "[supervisor] accountId=x1 restart 1" in caplog.text, what="the supervisor heard of it")
    parts.close()
