"""The spool (the ack point) on real SQLite files: order, replay, quarantine, and that no
failure can poison the shared writing connection."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import textwrap

import pytest

from daemonproc import ROOT
from wasync.runtime.spool import INLINE_RAW_BYTES, READERS, Spool


def test_spool_keeps_rows_until_done_and_across_reopen(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    seqs = [spool.append("a1", "Message", b"raw%d" % n) for n in range(5)]
    spool.append("a2", "Receipt", b"other")
    assert [r.seq for r in spool.pending("a1")] == seqs
    assert [r.seq for r in spool.pending("a1", after_seq=seqs[1], limit=2)] == seqs[2:4]
    spool.done(seqs[:2])
    spool_id = spool.id
    spool.close()
    again = Spool(tmp_path / "spool.db")  # a restart: what was not done is still there, in order
    assert [r.raw for r in again.pending("a1")] == [b"raw2", b"raw3", b"raw4"]
    assert again.depth() == 4 and sorted(again.accounts_with_pending()) == ["a1", "a2"]
    assert again.oldest_received_ms() is not None
    assert again.id == spool_id and len(spool_id) == 32  # a journal keeps its identity
    assert Spool(tmp_path / "other.db").id != spool_id
    again.close()


def test_a_page_of_rows_is_cut_by_raw_size_but_always_has_one_row(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    seqs = [spool.append("a1", "HistorySync", b"x" * size) for size in (600, 300, 200, 5000, 10)]
    spool.append("a2", "HistorySync", b"y" * 10)
    assert [r.seq for r in spool.pending("a1", max_bytes=1000)] == seqs[:3]  # 600 + 300 < 1000: the third fits
    assert [r.seq for r in spool.pending("a1", after_seq=seqs[2], max_bytes=1000)] == [seqs[3]]  # too big alone
    assert [r.seq for r in spool.pending("a1", after_seq=seqs[3], max_bytes=1000)] == [seqs[4]]
    assert [r.seq for r in spool.pending("a1", limit=2, max_bytes=10**6)] == seqs[:2]
    spool.close()


def test_a_page_brings_back_every_byte_of_every_row_in_order(tmp_path):
    # A page travels as one JSON result row with the raw bytes in hex: nothing may change.
    spool = Spool(tmp_path / "spool.db")
    raws = [bytes(range(256)), b"", b"\x00" * 3, "é🙂".encode(), *(os.urandom(n) for n in range(1, 400, 7))]
    seqs = [spool.append("a1", kind, raw) for kind, raw in zip(["Message", "Receipt"] * len(raws), raws)]
    for rows in (spool.pending("a1"), spool.pending("a1", max_bytes=10**6)):
        assert [(r.seq, r.account_id, r.raw) for r in rows] == [(seq, "a1", raw) for seq, raw in zip(seqs, raws)]
        assert [r.kind for r in rows[:2]] == ["Message", "Receipt"]
        assert all(isinstance(r.received_at_ms, int) and r.origin is None for r in rows)
    assert spool.pending("a1", after_seq=seqs[-1]) == [] and spool.pending("nobody") == []
    spool.close()


def test_a_big_row_is_read_on_its_own_not_inside_the_page(tmp_path, monkeypatch):
    # In hex inside JSON a row takes ~8x its size while it is read: history chunks are megabytes.
    import wasync.runtime.spool as spool_module

    spool = Spool(tmp_path / "spool.db")
    raws = [b"small", os.urandom(INLINE_RAW_BYTES + 1), b"", os.urandom(3 * INLINE_RAW_BYTES), b"last"]
    for raw in raws:
        spool.append("a1", "HistorySync", raw)
    inline = []  # the hex length of every raw that rode in a page
    read_page = spool_module.rows_at_once

    def recording(*args):
        page = read_page(*args)
        inline.extend(len(row[2] or "") for row in page)
        return page

    monkeypatch.setattr(spool_module, "rows_at_once", recording)
    assert [r.raw for r in spool.pending("a1")] == raws
    assert [r.raw for r in spool.pending("a1", max_bytes=10 * INLINE_RAW_BYTES)] == raws
    assert max(inline) == 2 * len(b"small")  # the big ones came on their own
    spool.close()


def test_spool_quarantine_keeps_the_rows_and_the_reason(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    bad = [spool.append("a1", "Message", b"\xff\xfe garbage%d" % n) for n in range(3)]
    keep = spool.append("a1", "Message", b"fine")
    spool.quarantine(bad[:2], "does not parse")
    spool.quarantine([bad[2]], "store refused it")
    assert [r.seq for r in spool.pending("a1")] == [keep] and spool.depth() == 1
    assert spool.quarantined("a1") == [(bad[0], "Message", "does not parse"), (bad[1], "Message", "does not parse"),
                                       (bad[2], "Message", "store refused it")]
    spool.close()


def test_concurrent_appends_from_many_threads(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    threads = [threading.Thread(target=lambda n=n: [spool.append(f"a{n}", "Message", b"x") for _ in range(200)])
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spool.depth() == 1600
    spool.close()


def test_a_write_that_fails_inside_its_transaction_is_rolled_back(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    seq = spool.append("a1", "Message", b"one")
    with pytest.raises(sqlite3.IntegrityError):
        spool.quarantine([seq], None)  # reason is NOT NULL: fails after BEGIN, inside the transaction
    assert not spool._writer.in_transaction
    later = spool.append("a1", "Message", b"two")
    # Visible to another connection: committed, not parked in an open transaction.
    other = sqlite3.connect(tmp_path / "spool.db")
    assert [s for (s,) in other.execute("SELECT seq FROM events ORDER BY seq")] == [seq, later]
    other.close()
    spool.close()


# A process that appends, fails a done() (another process holds the file), appends again
# and is SIGKILLed right after: the appends after the failure are the ack point and must
# survive. (Before the transaction helper, the failed done() left its BEGIN open and the
# later appends joined a transaction nobody committed.)
_CRASHER = textwrap.dedent("""
    import os, signal, sqlite3, sys
    from wasync.runtime.spool import Spool
    path = sys.argv[1]
    spool = Spool(path, busy_timeout_s=0.2)
    first = spool.append("a1", "Message", b"before")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        spool.done([first])
        print("done() did not fail", flush=True)
    except sqlite3.OperationalError as exc:
        print("done() failed:", exc, flush=True)
    blocker.execute("ROLLBACK")
    for n in range(3):
        spool.append("a1", "Message", b"after%d" % n)
    print("appended", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_failed_done_leaves_later_appends_durable_through_sigkill(tmp_path):
    path = tmp_path / "spool.db"
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "done() failed: database is locked" in proc.stdout and "appended" in proc.stdout, proc.stdout
    spool = Spool(path)
    assert [r.raw for r in spool.pending("a1")] == [b"before", b"after0", b"after1", b"after2"]
    spool.close()


def test_threads_that_come_and_go_leave_no_reader_connections_behind(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    spool.append("a1", "Message", b"x")

    def read():
        spool.pending("a1")
        spool.depth()

    for _ in range(50):  # like 50 replaced actors, each on its own thread
        t = threading.Thread(target=read)
        t.start()
        t.join()
    assert spool._idle.qsize() <= READERS
    spool.close()
    assert spool._idle.qsize() == 0


def test_many_threads_reading_at_once_share_a_few_connections(tmp_path, monkeypatch):
    # Fifty accounts draining at once opened and closed dozens of connections a second,
    # each with its own page cache: memory grew with the spool. READERS at most; the rest wait.
    spool = Spool(tmp_path / "spool.db")
    spool.append("a1", "Message", b"x")
    opened, holding, most = [], [0], [0]
    lock = threading.Lock()
    connect = spool._connect
    monkeypatch.setattr(spool, "_connect", lambda: opened.append(1) or connect())

    def read():
        with spool._reading() as conn:
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            time.sleep(0.2)  # a slow read: everyone else arrives meanwhile
            conn.execute("SELECT 1").fetchone()
            with lock:
                holding[0] -= 1
        assert [r.raw for r in spool.pending("a1")] == [b"x"]

    threads = [threading.Thread(target=read) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert most[0] == READERS and len(opened) < READERS and spool._idle.qsize() == READERS  # one from the start
    spool.close()


# --- one spool per process, and the spools of processes that died ----------------------------


def test_a_second_process_cannot_open_a_spool_in_use(tmp_path):
    from wasync.runtime.spool import SpoolInUse

    spool = Spool(tmp_path / "i1.db")
    with pytest.raises(SpoolInUse, match="in use by another wasync process"):
        Spool(tmp_path / "i1.db")
    spool.close()
    Spool(tmp_path / "i1.db").close()  # free again once closed (or once its process died)


def test_a_dead_process_spool_is_adopted_with_where_each_row_came_from(tmp_path):
    from wasync.runtime.spool import spool_path

    dead_path = spool_path(tmp_path, "host-111")
    dead = Spool(dead_path)
    first = dead.append("a1", "HistorySync", b"chunk")
    dead.append("a2", "Message", b"msg")
    bad = dead.append("a2", "Message", b"garbage")
    dead.quarantine([bad], "does not parse")
    dead_id = dead.id
    dead.close()
    live = Spool(spool_path(tmp_path, "host-222"))
    assert live.orphans() == [dead_path]
    assert live.adopt(dead_path) == 2
    rows = live.pending("a1") + live.pending("a2")
    assert [(r.account_id, r.raw, r.origin) for r in rows] == [("a1", b"chunk", (dead_id, first)),
                                                               ("a2", b"msg", (dead_id, first + 1))]
    assert not dead_path.exists()
    kept = list(tmp_path.joinpath("spool").glob("host-111.db.adopted-*"))  # its quarantine stays, renamed
    assert len(kept) == 1
    assert live.orphans() == [] and live.adopt(dead_path) == 0
    live.close()


def test_a_live_process_spool_is_not_adopted_and_a_legacy_one_is(tmp_path):
    from wasync.runtime.spool import spool_path

    other = Spool(spool_path(tmp_path, "still-running"))
    other.append("a1", "Message", b"theirs")
    legacy = Spool(tmp_path / "spool.db")  # where spools lived before one per process
    legacy.append("a9", "Message", b"old")
    legacy.close()
    mine = Spool(spool_path(tmp_path, "me"))
    assert [p.name for p in mine.orphans()] == ["still-running.db"]  # the legacy one: at start only
    assert sorted(p.name for p in mine.orphans(include_legacy=True)) == ["spool.db", "still-running.db"]
    adopted = mine.adopt_orphans(include_legacy=True)
    assert adopted == 1 and [r.raw for r in mine.pending("a9")] == [b"old"] and mine.pending("a1") == []
    assert other.depth() == 1  # untouched: its process lives
    other.close()
    mine.close()


def test_a_file_that_is_no_spool_is_moved_aside_and_the_others_adopted(tmp_path, caplog):
    from wasync.runtime.spool import spool_path

    bad = spool_path(tmp_path, "garbage")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not SQLite" * 100)
    dead = Spool(spool_path(tmp_path, "dead"))
    dead.append("a1", "Message", b"msg")
    dead.close()
    live = Spool(spool_path(tmp_path, "live"))
    assert live.adopt_orphans() == 1 and [r.raw for r in live.pending("a1")] == [b"msg"]
    [aside] = bad.parent.glob("garbage.db.unreadable-*")
    assert aside.read_bytes().startswith(b"this is not SQLite") and not bad.exists()
    assert "not a readable spool" in caplog.text
    assert live.adopt_orphans() == 0  # not tried again
    live.close()


def test_a_restarted_process_waits_while_another_adopts_its_old_spool(tmp_path):
    import threading
    import time

    from wasync.runtime.spool import ADOPTING, SpoolInUse, _lock, spool_path

    path = spool_path(tmp_path, "i1")
    Spool(path).close()
    adopter = _lock(path, ADOPTING)
    threading.Timer(0.5, adopter.close).start()
    started = time.monotonic()
    Spool(path).close()  # not refused: it waited for the adoption
    assert 0.4 < time.monotonic() - started < 5
    running = Spool(path)
    started = time.monotonic()
    with pytest.raises(SpoolInUse):  # a live process with the same INSTANCE_ID: refused at once
        Spool(path)
    assert time.monotonic() - started < 1
    running.close()


def test_appends_never_checkpoint_and_the_wal_is_copied_back_by_its_own_thread(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    probe = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
    try:
        assert spool._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # not inside an append
        blob = b"h" * 8192
        for _ in range(500):  # ~4 MB, as a history sync appends
            spool.append("a1", "HistorySync", blob)
        time.sleep(1.5)  # the checkpoint thread's turn (once a second)
        for _ in range(10):
            spool.append("a1", "HistorySync", blob)
        frames = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert frames < 500  # the WAL was copied back and started over: only the last 10 appends in it
    finally:
        probe.close()
        spool.close()
