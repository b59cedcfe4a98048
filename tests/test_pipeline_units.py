"""The ingest path inside the daemon's real system (build_system on a FakeClock): account
actors replaying and quarantining spool rows against a real simulator, history dry run,
counters that survive a replay, and the sweeper that leaves no row stranded."""
from __future__ import annotations

import sqlite3

import pytest

from simproc import SimProcess
from systemrig import SystemRig
from wasync.runtime.account import AccountPatch, Repair
from wasync.runtime.model import AccountStatus, thread_id
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.worldmodel import Chat, WorldMessage
from wasync.runtime.transport.simulated import SimulatedTransport

PHONE = "15550001111"
ALICE = "15552223333@s.whatsapp.net"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    world = {"seed": 1, "accounts": [{"phone": PHONE, "initialSyncPerChat": 5, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [{"id": "H1", "ts": 1763900000, "text": "old"}]}]}]}
    proc = SimProcess(world, tmp_path_factory.mktemp("sim"), speed=10).start()
    yield proc
    proc.stop()


@pytest.fixture
def rigs(tmp_path):
    made = []

    def make(accounts=(), **kw):
        made.append(SystemRig(tmp_path / "daemon", accounts, **kw))  # one data dir: one host
        return made[-1]

    yield make
    for rig in made:
        rig.stop()
        if isinstance(rig.transport, SimulatedTransport):
            rig.transport.close()


def live_message(msg_id: str, text: str, ts: int = 1763900100):
    return pb.wire(pb.message_event(PHONE, ALICE, WorldMessage(id=msg_id, from_me=False, ts=ts, type="text",
                                                               text=text)))


def history_chunk(msg_id: str, text: str = "dry"):
    return pb.wire(pb.history_sync_event(PHONE, "RECENT", [(
        Chat(jid=ALICE, name="Alice", group=False, auto_receipts=True, messages=()),
        [WorldMessage(id=msg_id, from_me=False, ts=1763900000, type="text", text=text)])]))


def test_account_replays_left_rows_first_and_quarantines_garbage(sim, rigs, tmp_path):
    rig = rigs([("a1", PHONE)], transport=SimulatedTransport("127.0.0.1", sim.port, tmp_path / "sessions"))
    spool, store = rig.system.spool, rig.store
    # what an earlier life left behind: one good live message, one unreadable event
    spool.append("a1", *live_message("L1", "from before the crash"))
    bad = spool.append("a1", "Message", b"\xff\xfe not a protobuf")
    rig.start()
    rig.until(lambda: store.get_message("a1", ALICE, "L1"), what="the replayed message")
    rig.until(lambda: store.get_message("a1", ALICE, "H1"), what="history after the replay")
    assert spool.quarantined("a1")[0][0] == bad
    assert rig.metrics.normalize_errors._value.get() == 1
    rig.until(lambda: spool.depth() == 0, what="everything done")
    state = rig.until(lambda: (lambda s: s if s.connected else None)(rig.board.account("a1")), what="connected")
    assert state.real_messages >= 1 and state.status is AccountStatus.CONNECTED
    assert store.get_thread(thread_id("a1", ALICE))["lastMessagePreview"] == "from before the crash"


def test_history_dry_run_counts_and_writes_no_messages(sim, rigs, tmp_path):
    rig = rigs([("a2", None)], transport=SimulatedTransport("127.0.0.1", sim.port, tmp_path / "sessions"),
               WHATSAPP_HISTORY_SYNC_DRY_RUN="true")
    rig.system.spool.append("a2", *history_chunk("D1"))  # as if the transport had just taken it
    rig.start()
    rig.until(lambda: (rig.store.get_account("a2") or {}).get("lastHistorySyncResult"), what="history result")
    result = rig.store.get_account("a2")["lastHistorySyncResult"]
    assert result == {"saved": 0, "skipped": 0, "errors": 0, "total": 1, "dryRun": True}
    assert rig.store.get_message("a2", ALICE, "D1") is None


def test_a_session_that_cannot_start_is_reported_not_silent(rigs, caplog):
    rig = rigs([("x1", None)])
    rig.transport.failing.add("x1")
    rig.start()
    rig.advance(0.5)
    doc = rig.store.get_account("x1")
    assert doc["status"] == "disconnected" and "no transport in this build" in doc["lastRealtimeError"]
    assert rig.board.account("x1").status is AccountStatus.DISCONNECTED
    assert "[supervisor] accountId=x1 restart 1" in caplog.text


def test_a_replayed_history_chunk_is_counted_once(rigs, tmp_path):
    """A crash between the store's commit and spool.done(): the row is replayed on the
    next start, and historySyncCount must not count it twice."""
    rig = rigs([("a1", PHONE)])
    seq = rig.system.spool.append("a1", *history_chunk("R1", "replayed"))
    spool_path = rig.system.spool.path
    copy = sqlite3.connect(spool_path).execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone()
    rig.start()
    rig.until(lambda: rig.system.spool.depth() == 0, what="the chunk stored")
    assert rig.store.get_account("a1")["historySyncCount"] == 1
    rig.stop()
    with sqlite3.connect(spool_path) as conn:  # as if done() had never run
        conn.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(copy))})", copy)
    again = rigs()
    again.start()
    again.until(lambda: again.system.spool.depth() == 0, what="the replay stored")
    doc = again.store.get_account("a1")
    assert doc["historySyncCount"] == 1 and again.store.get_message("a1", ALICE, "R1")["body"] == "replayed"
    # a new chunk, arriving through the session, still counts
    again.transport.sessions["a1"].sink(*history_chunk("R2"))
    again.until(lambda: again.store.get_account("a1")["historySyncCount"] == 2, what="the next chunk counted")


def test_rows_of_accounts_no_actor_reads_are_swept_not_stranded(rigs):
    rig = rigs([("kept", PHONE), ("held", "15550002222")])
    rig.store.update_account("held", AccountPatch(status=AccountStatus.NEEDS_REPAIR, repair=Repair(True, "x", 1)), 1)
    spool = rig.system.spool
    spool.append("gone", *live_message("G1", "for an account removed since"))  # left by an earlier run
    spool.append("held", *live_message("H1", "held for repair"))
    spool.append("gone", "Disconnected", pb.wire(pb.disconnected_event())[1])
    rig.start()
    rig.advance(2.5)  # one sweep
    assert spool.depth() == 0
    assert rig.store.get_message("gone", ALICE, "G1")["body"] == "for an account removed since"
    assert rig.store.get_message("held", ALICE, "H1") is not None
    assert rig.store.get_account("gone") is None  # its realtime facts did not bring it back
    assert rig.metrics.swept._value.get() == 3
    # A removed account's last Disconnected (appended as its session stops) is swept too.
    rig.control.remove_account("kept")
    rig.advance(2.5)
    assert spool.depth() == 0 and "kept" not in rig.running()


def test_rows_of_a_process_that_died_are_adopted_and_still_counted_once(rigs):
    """A process dies between the store's commit and done(); another process on the host
    (another INSTANCE_ID, same data dir) adopts its spool at start and replays the row."""
    old = rigs([("a1", PHONE)], instance_id="old-1")
    seq = old.system.spool.append("a1", *history_chunk("R9", "adopted"))
    old_path = old.system.spool.path
    copy = sqlite3.connect(old_path).execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone()
    old.start()
    old.until(lambda: old.system.spool.depth() == 0, what="the chunk stored")
    old.stop()
    with sqlite3.connect(old_path) as conn:  # as if done() had never run
        conn.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(copy))})", copy)
    new = rigs(instance_id="new-2")
    new.start()
    assert not old_path.exists()
    new.until(lambda: new.system.spool.depth() == 0, what="the adopted row stored")
    assert new.store.get_account("a1")["historySyncCount"] == 1
    assert new.store.get_message("a1", ALICE, "R9")["body"] == "adopted"


def test_adopted_rows_are_written_but_say_nothing_about_the_running_session(rigs):
    """A dead process's last events for an account (the StreamReplaced that ended its
    socket, a Disconnected) arrive by adoption while this process runs the account: the
    message is stored, the session here is not taken for replaced or disconnected."""
    from wasync.runtime.spool import Spool, spool_path

    rig = rigs([("a1", PHONE)], instance_id="new-2")
    rig.transport.connect_on_start.add("a1")
    rig.start()
    rig.until(lambda: rig.board.account("a1").connected, what="a1 connected")
    dead = Spool(spool_path(rig.system.settings.data_dir, "old-1"))
    dead.append("a1", *live_message("D1", "from the dead process"))
    dead.append("a1", *pb.wire(pb.stream_replaced_event()))
    dead.append("a1", *pb.wire(pb.disconnected_event()))
    dead.close()
    rig.advance(31)  # the sweeper adopts it
    rig.until(lambda: rig.store.get_message("a1", ALICE, "D1") is not None, what="the adopted message stored")
    rig.settle()
    assert rig.board.account("a1").connected
    assert rig.metrics.lease_lost.labels(reason="taken")._value.get() == 0
    assert "a1" in rig.running() and rig.transport.opened["a1"] == 1


def test_an_account_leaves_its_rows_in_the_spool_while_the_writer_is_full_and_reads_them_when_woken(rigs):
    rig = rigs([("a1", PHONE)]).start()
    rig.until(lambda: "a1" in rig.transport.sessions, what="the session")
    backlog = rig.system.backlog
    backlog.set(live_ops=backlog.limits[False], bulk_ops=0)  # as if the store were down for a while
    rig.transport.sessions["a1"].emit(pb.message_event(PHONE, ALICE, WorldMessage(
        id="B1", from_me=False, ts=1763900100, type="text", text="waits in the spool")))
    rig.settle()
    assert rig.store.get_message("a1", ALICE, "B1") is None and rig.system.spool.depth() == 1
    backlog.set(live_ops=0, bulk_ops=0)  # the writer made room: the actor is woken
    rig.until(lambda: rig.store.get_message("a1", ALICE, "B1"), what="the message after the wake")


def test_a_stream_replaced_swept_for_an_account_no_actor_runs_is_said(rigs, caplog):
    """An instance frozen while its leases moved on wakes, lets its sessions go and leaves
    their last events to the sweeper: a kicked socket among them is still said."""
    rig = rigs([])
    rig.system.spool.append("gone", *pb.wire(pb.stream_replaced_event()))
    rig.start()
    rig.advance(2.5)  # one sweep
    assert rig.system.spool.depth() == 0
    assert "accountId=gone StreamReplaced: another client owns this session (swept" in caplog.text
    assert rig.metrics.account_stream_replaced.labels("gone")._value.get() == 1


def test_a_page_of_live_messages_moves_the_facts_counters_and_record_once_for_each(rigs):
    """A backlog is read 200 rows a page, and a page's messages move the account's facts,
    its counters and its record together: each message still counts once, and the last
    one's times are what the record says."""
    rig = rigs([("a1", PHONE)])
    spool = rig.system.spool
    for n in range(5):  # left by an earlier life: read as one page
        spool.append("a1", *live_message(f"P{n}", f"page {n}", ts=1763900100 + n))
    spool.append("a1", *pb.wire(pb.disconnected_event()))
    spool.append("a1", *live_message("P5", "after the session event", ts=1763900200))
    row_times = [row.received_at_ms for row in spool.pending("a1")]
    rig.start()
    rig.until(lambda: spool.depth() == 0, what="the page stored")
    facts = rig.board.account("a1")
    assert facts.real_messages == 6
    assert rig.metrics.messages_ingested.labels(source="realtime", type="text")._value.get() == 6
    assert rig.metrics.message_class.labels(**{"class": "real"})._value.get() == 6
    doc = rig.store.get_account("a1")
    assert doc["lastRealtimeMessageAt"] == "2025-11-23T12:16:40.000Z"  # 1763900200: the last one's
    assert facts.last_real_message_ms == max(row_times)  # when the last one arrived


def test_the_sweeper_reads_big_history_rows_a_megabyte_at_a_time(rigs, monkeypatch):
    """History rows are megabytes and a sweep step becomes one batch in the writer's
    memory: like an account actor, the sweeper reads about 1 MiB at a time."""
    rig = rigs([])
    spool = rig.system.spool
    padding = b"\x00" * 600_000  # a big HistorySync that still parses: the padding is field 127, unknown
    chunks = [history_chunk(f"S{n}") for n in range(4)]
    for kind, raw in chunks:
        spool.append("gone", kind, raw + b"\xfa\x07" + _varint(len(padding)) + padding)
    pages = []  # raw bytes of every page read
    read_page = spool.pending

    def recording(*args, **kwargs):
        rows = read_page(*args, **kwargs)
        pages.append(sum(len(row.raw) for row in rows))
        return rows

    monkeypatch.setattr(spool, "pending", recording)
    rig.start()
    rig.advance(2.5)  # one sweep
    rig.until(lambda: spool.depth() == 0, what="every chunk swept")
    assert all(rig.store.get_message("gone", ALICE, f"S{n}") for n in range(4))
    assert max(pages) < 2 * 600_000 + 2_000  # two rows at most: the second starts before 1 MiB


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
