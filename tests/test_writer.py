"""StoreWriterActor on a real SQLite store and spool, its timers on a FakeTicker: when it
flushes, what it does while the store is down, and that one account whose data the store
refuses never blocks the others."""
from __future__ import annotations

import sqlite3

import pykka
import pytest
from pykka.messages import ProxyGetAttr

from store_fixtures import msg
from wasync.actors.writer import FLUSH_OPS, StoreWriterActor
from wasync.actors.writer_lanes import Backlog
from wasync.actors.writer_protocol import AccountUpdate, Drain, FlushDue, IngestBatch, StoreAnswers
from wasync.runtime.account import AccountPatch
from wasync.runtime.board import Board
from wasync.runtime.clock import FakeClock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus
from wasync.runtime.spool import Spool
from wasync.runtime.store.sqlite import SqliteStore
from wasync.runtime.ticker import FakeTicker

CHAT = "15552223333@s.whatsapp.net"


class Rig:
    def __init__(self, tmp_path, store_busy_ms: int = 50, **writer_options):
        self.clock = FakeClock()
        self.ticker = FakeTicker(self.clock)
        self.store = SqliteStore(tmp_path / "store.db", busy_timeout_ms=store_busy_ms)
        self.spool = Spool(tmp_path / "spool.db")
        self.board, self.metrics = Board("i1", "sqlite", self.clock), Metrics()
        self.rejected = []
        self.writer = StoreWriterActor.start(self.store, self.spool, self.board, self.metrics, self.clock,
                                             self.ticker, on_rejected=self.rejected.append, **writer_options)

    def batch(self, account_id, *messages, patch=None) -> IngestBatch:
        """Spool rows for `messages` and the batch their fold would make."""
        seqs = tuple(self.spool.append(account_id, "Message", b"raw") for _ in messages) or (
            self.spool.append(account_id, "Connected", b""),)
        return IngestBatch(account_id, seqs, messages=tuple(messages), patch=patch)

    def history(self, account_id, *messages) -> IngestBatch:
        """One history-sync row holding all of `messages`."""
        seq = self.spool.append(account_id, "HistorySync", b"raw")
        return IngestBatch(account_id, (seq,), messages=tuple(messages), bulk=True)

    def tell(self, *items) -> None:
        for item in items:
            self.writer.tell(item)
        self.settle()

    def settle(self, rounds: int = 2) -> None:
        """Everything told is handled, and the flushes the writer told itself on the way
        (each round lets one more through: a full batch's, then each history slice's)."""
        for _ in range(rounds):
            self.writer.ask(ProxyGetAttr(attr_path=("actor_urn",)))

    def count(self, account_id) -> int:
        with sqlite3.connect(self.store.path) as conn:
            return conn.execute("SELECT COUNT(*) FROM messages WHERE account_id = ?", (account_id,)).fetchone()[0]

    def stored(self, account_id, message_id):
        return self.store.get_message(account_id, CHAT, message_id)

    def close(self):
        pykka.ActorRegistry.stop_all(timeout=10)
        self.store.close()
        self.spool.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_a_batch_is_written_100_ms_after_it_arrived_and_its_rows_leave_the_spool(rig):
    rig.tell(rig.batch("a1", msg(id="M1", account="a1")))
    rig.ticker.advance(0.099)
    assert rig.stored("a1", "M1") is None and rig.spool.depth() == 1
    rig.ticker.advance(0.001)
    assert rig.stored("a1", "M1")["body"] == "hi" and rig.spool.depth() == 0
    assert rig.board.store_health().connected


def test_right_after_a_full_flush_the_next_batch_is_written_without_the_100_ms_wait(rig):
    """A full flush means a backlog is draining (a store outage's, a restart's): gathering
    for another 100 ms would only add to the drain. Once flushes are small again, it waits."""
    rig.tell(rig.batch("a1", *(msg(id=f"F{n}", account="a1") for n in range(FLUSH_OPS))))
    assert rig.count("a1") == FLUSH_OPS  # full: written at once
    rig.tell(rig.batch("a1", msg(id="T1", account="a1")))
    assert rig.stored("a1", "T1") is not None  # the tail of the drain, without waiting
    rig.tell(rig.batch("a1", msg(id="T2", account="a1")))
    assert rig.stored("a1", "T2") is None  # T1's flush was small: live work is gathered again
    rig.ticker.advance(0.1)
    assert rig.stored("a1", "T2") is not None


def test_a_store_that_holds_nothing_back_has_its_rows_leave_the_spool_with_each_write(rig):
    """SQLite writes everything at once: its rows are not kept for the next flush window
    (STORE_FLUSH_S), which only Firestore's coalesced thread documents need (an outage's
    spool backlog took 1.06 s to leave instead of 0.06)."""
    rig.tell(rig.batch("a1", msg(id="M1", account="a1")))
    rig.ticker.advance(0.1)
    assert rig.spool.depth() == 0
    rig.tell(rig.batch("a1", msg(id="M2", account="a1")))
    rig.ticker.advance(0.1)
    assert rig.stored("a1", "M2") is not None and rig.spool.depth() == 0


def test_500_operations_are_written_at_once(rig):
    rig.tell(rig.batch("a1", *(msg(id=f"B{n}", account="a1") for n in range(500))))
    assert rig.stored("a1", "B499") is not None  # no timer needed
    assert rig.metrics.flush_batch._sum.get() == 500


def test_a_store_outage_keeps_everything_and_retries_with_backoff(rig, tmp_path):
    rig.store.create_account("a1", None, rig.clock.wall_ms())
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: every write fails
    rig.tell(rig.batch("a1", msg(id="W1", account="a1")),
             AccountUpdate("a1", AccountPatch(status=AccountStatus.CONNECTED)))
    rig.ticker.advance(0.1)
    health = rig.board.store_health()
    assert not health.connected and "locked" in health.last_error
    assert rig.spool.depth() == 1 and rig.metrics.store_errors.labels(op="messages")._value.get() == 1
    rig.ticker.advance(0.25)  # first retry after 0.2 s ±20 %: still locked
    assert rig.metrics.store_errors.labels(op="messages")._value.get() == 2
    rig.ticker.advance(0.5)  # second retry after 0.4 s ±20 %
    assert rig.metrics.store_errors.labels(op="messages")._value.get() == 3
    blocker.execute("ROLLBACK")
    rig.tell(StoreAnswers())  # the monitor saw the store back: no waiting out the backoff
    assert rig.stored("a1", "W1") is not None and rig.spool.depth() == 0
    assert rig.store.get_account("a1")["status"] == "connected"
    assert rig.board.store_health().connected and rig.rejected == []


def test_an_account_the_store_refuses_is_quarantined_and_the_others_go_through(rig):
    good_a = rig.batch("a1", msg(id="G1", account="a1"))
    bad = rig.batch("bad", msg(id="X1", account="bad"), msg(id="X2", account="bad", ts=10 ** 17))  # year 3e6
    good_b = rig.batch("a2", msg(id="G2", account="a2"))
    rig.tell(good_a, bad, good_b)
    rig.ticker.advance(0.1)
    assert rig.stored("a1", "G1") is not None and rig.stored("a2", "G2") is not None
    assert rig.spool.depth() == 0
    quarantined = rig.spool.quarantined("bad")
    assert [seq for seq, _, _ in quarantined] == list(bad.seqs)
    assert all(reason.startswith("store refused: ") and "year" in reason for _, _, reason in quarantined)
    (rejection,) = rig.rejected
    assert rejection.account_id == "bad" and rejection.rows == 2 and "year" in rejection.reason
    assert rig.metrics.store_rejected.labels(reason="ValueError")._value.get() == 1
    assert rig.board.store_health().connected  # the store itself is fine
    rig.tell(rig.batch("bad", msg(id="X3", account="bad")))  # later writes of that account are fine again
    rig.ticker.advance(0.1)
    assert rig.stored("bad", "X3") is not None


def test_drain_flushes_now(rig):
    rig.tell(rig.batch("a1", msg(id="D1", account="a1")))
    assert rig.writer.ask(Drain()) is True
    assert rig.stored("a1", "D1") is not None and rig.spool.depth() == 0


def test_when_every_batch_fails_unexpectedly_nothing_is_quarantined_until_others_go_through(rig):
    bad_a = rig.batch("a1", msg(id="Y1", account="a1", ts=10 ** 17))
    bad_b = rig.batch("a2", msg(id="Y2", account="a2", ts=10 ** 17))
    rig.tell(bad_a, bad_b)
    rig.ticker.advance(0.1)
    # Nothing written and nothing refused: the trouble may be ours, not the data's. Keep all.
    assert rig.spool.quarantined() == [] and rig.spool.depth() == 2 and rig.rejected == []
    assert not rig.board.store_health().connected
    rig.tell(rig.batch("a3", msg(id="G3", account="a3")))
    rig.ticker.advance(0.3)  # the retry: a3 goes through, so a1's and a2's batches are the data's fault
    assert rig.stored("a3", "G3") is not None
    assert sorted(a for a, _ in ((r.account_id, r) for r in rig.rejected)) == ["a1", "a2"]
    assert rig.spool.depth() == 0 and len(rig.spool.quarantined()) == 2
    assert rig.board.store_health().connected


def test_live_messages_of_other_accounts_are_written_before_a_history_burst_which_goes_in_slices(tmp_path):
    rig = Rig(tmp_path, slice_ops=500)
    try:
        big = rig.history("big", *(msg(id=f"H{n}", account="big") for n in range(20_000)))
        rig.writer.tell(big)
        rig.tell(rig.batch("small", msg(id="L1", account="small")))  # arrives behind the burst
        assert rig.stored("small", "L1") is not None  # with one of the first slices, not after all 40
        stored = rig.count("big")
        assert stored % 500 == 0 and 500 <= stored < 20_000
        assert rig.spool.depth() == 1  # the history row leaves with its last slice
        assert rig.writer.ask(Drain()) is True
        assert rig.count("big") == 20_000 and rig.spool.depth() == 0
    finally:
        rig.close()


def test_a_history_slice_the_store_refuses_quarantines_the_rows_it_came_from(tmp_path):
    rig = Rig(tmp_path, slice_ops=500)
    try:
        messages = [msg(id=f"H{n}", account="big") for n in range(800)]
        messages[10] = msg(id="H10", account="big", ts=10 ** 17)  # the store refuses it (year 3e6)
        big = rig.history("big", *messages)
        rig.tell(big, rig.batch("a1", msg(id="G1", account="a1")))
        rig.settle(rounds=3)
        assert rig.stored("a1", "G1") is not None
        assert [seq for seq, _, _ in rig.spool.quarantined("big")] == list(big.seqs)
        assert rig.rejected[0].account_id == "big" and rig.rejected[0].rows == 1
        assert rig.spool.depth() == 0
    finally:
        rig.close()


def test_what_feeders_hand_to_a_writer_stuck_in_a_store_call_counts_against_its_backlog(tmp_path):
    """A store call that waits (SQLite out its busy timeout, 30 s by default; Firestore its
    deadline) keeps the writer from its mailbox. Counting only its lanes, a 60 s outage
    put every live message of it into that mailbox."""
    backlog = Backlog(live_limit_ops=3, bulk_limit_ops=10)
    rig = Rig(tmp_path, store_busy_ms=20_000, backlog=backlog)
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        rig.tell(rig.batch("a1", msg(id="W0", account="a1")))
        rig.writer.tell(FlushDue())  # the flush: waits for the store's lock (not asked: nobody waits on it)
        woken = []
        for n in (1, 2):  # W0, in the stuck write, still counts
            assert backlog.has_room(False, "a1", lambda: woken.append("a1"))
            batch = rig.batch("a1", msg(id=f"W{n}", account="a1"))
            backlog.handing(batch)
            rig.writer.tell(batch)
        assert not backlog.has_room(False, "a1", lambda: woken.append("a1"))  # rows stay in the spool
        blocker.execute("ROLLBACK")  # W0 goes through; W1 and W2 are taken, then written 100 ms later
        rig.settle()
        rig.ticker.advance(0.1)
        rig.settle()
        assert woken == ["a1"] and rig.stored("a1", "W2") is not None
        assert backlog.has_room(False, "a1", None)
    finally:
        blocker.close()
        rig.close()


def test_while_the_store_is_down_the_writer_holds_a_bounded_backlog_and_wakes_its_feeders(tmp_path):
    backlog = Backlog(live_limit_ops=3, bulk_limit_ops=10)
    rig = Rig(tmp_path, backlog=backlog)
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        woken = []
        rig.tell(*(rig.batch("a1", msg(id=f"W{n}", account="a1")) for n in range(3)))
        rig.ticker.advance(0.1)
        assert not backlog.has_room(False, "a1", lambda: woken.append("a1"))  # the feeder leaves rows in the spool
        blocker.execute("ROLLBACK")
        rig.tell(StoreAnswers())
        assert woken == ["a1"] and rig.stored("a1", "W2") is not None
        assert backlog.has_room(False, "a1", lambda: None)
    finally:
        blocker.close()
        rig.close()
