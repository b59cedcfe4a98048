"""The store monitor on a FakeClock against a real SQLite store and spool: how often it
asks while the store does not answer, and what it reads from the spool meanwhile."""
from __future__ import annotations

import sqlite3

import pykka
from pykka.messages import ProxyGetAttr

from wasync.actors.monitor import StoreMonitorActor
from wasync.runtime.board import Board
from wasync.runtime.clock import FakeClock
from wasync.runtime.spool import Spool
from wasync.runtime.store.sqlite import SqliteStore
from wasync.runtime.ticker import FakeTicker


def test_while_the_store_does_not_answer_it_is_asked_every_half_second_and_the_spool_read_once_a_period(tmp_path):
    clock = FakeClock()
    ticker = FakeTicker(clock)
    store = SqliteStore(tmp_path / "store.db", ping_timeout_s=0.05)
    spool = Spool(tmp_path / "spool.db")
    board = Board("i1", "sqlite", clock)
    pings, spool_reads, told = [], [], []
    ping = store.ping
    store.ping = lambda: pings.append(clock.monotonic_s()) or ping()
    depth = spool.depth
    spool.depth = lambda: spool_reads.append(clock.monotonic_s()) or depth()
    writer = pykka.ThreadingActor.start()  # told StoreAnswers; nothing to do with it here
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        monitor = StoreMonitorActor.start(store, spool, board, writer, ticker, told.append, every_s=2.0, recheck_s=0.5)
        monitor.ask(ProxyGetAttr(attr_path=("actor_urn",)))  # its first check (told at start) is done
        ticker.advance(4.0)
        assert len(pings) == 9 and not board.store_health().connected  # at 0, 0.5, ... 4.0 (not 0, 2, 4)
        # The spool's oldest row is a scan of all of it, largest during an outage: once a period.
        assert [round(t - spool_reads[0], 1) for t in spool_reads] == [0.0, 1.5, 3.5]
        blocker.execute("ROLLBACK")
        ticker.advance(0.5)
        assert board.store_health().connected and len(told) == 1  # a lease round, at once
        ticker.advance(1.9)
        assert len(pings) == 10  # answered: every 2 s again
    finally:
        blocker.close()
        pykka.ActorRegistry.stop_all(timeout=10)
        store.close()
        spool.close()
