"""End to end: a real `wasync sim` process, a real `wasync run` process, a real store.

The store is compared with the simulator's ground truth (`GET /sim/world`, see
groundtruth.py): every message the client received exactly once with the right fields
and final status, every thread describing its newest stored message, nothing else
stored. Around that: a SIGKILL in the middle of a history burst, a Firestore outage
(the emulator frozen with SIGSTOP), and a SIGTERM drain.

Waiting is always polling (`wait_for`) on facts both processes publish: the
simulator's per-account `unacked`/`held`/`connected`, the daemon's spool (`GET /diag`
and the spool file itself) and its log. No fixed sleeps beyond what a timeline needs.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

import groundtruth as gt
from daemonproc import ROOT, DaemonProcess
from emulator import FirestoreEmulator
from simproc import SimProcess, wait_for
from wasync.runtime.sim.world import parse_world

pytestmark = pytest.mark.slow

SPEED = 10.0  # timeline speed of the ground-truth test
SHUTDOWN_LINE = "[supervisor] shutting down: spool empty (0 events left for the next start)"


# --- processes -------------------------------------------------------------------------


class Stack:
    """Every process a test started, stopped at the end whatever happened, and their
    logs for failure messages."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.daemons: list[DaemonProcess] = []
        self.sims: list[SimProcess] = []
        self.emulators: list[FirestoreEmulator] = []
        self.resume: list[Callable[[], None]] = []

    def sim(self, world: dict, speed: float, name: str = "sim") -> SimProcess:
        sim = SimProcess(world, self.tmp_path / name, speed=speed)
        self.sims.append(sim)
        return sim.start()

    def daemon(self, sim: SimProcess, store_env: dict[str, str], name: str = "daemon",
               port: Optional[int] = None) -> DaemonProcess:
        env = {"WASYNC_TRANSPORT": sim.address, **store_env}
        daemon = DaemonProcess(self.tmp_path / name, env, port=port)
        self.daemons.append(daemon)
        return daemon

    def logs(self, chars: int = 3000) -> str:
        parts = []
        for d in self.daemons:
            if d.log.exists():
                parts.append(f"--- {d.log.name} (last {chars} chars)\n{d.tail(chars)}")
        for s in self.sims:
            if s.log.exists():
                parts.append(f"--- {s.log} (last 1500 chars)\n{s.log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for fn in self.resume:
            fn()
        for d in self.daemons:
            d.kill()
        for s in self.sims:
            s.stop()
        for e in self.emulators:
            e.stop()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


def add_account_api(daemon: DaemonProcess, account_id: str, phone: str) -> None:
    status, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": account_id, "phone": phone})
    assert status == 201, (status, body)


def add_account_cli(daemon: DaemonProcess, account_id: str, phone: str) -> None:
    """`wasync accounts add` with the daemon's settings (works before it starts)."""
    done = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "accounts", "add", account_id,
                           "--phone", phone], env=daemon.env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def spool_path(daemon: DaemonProcess) -> Path:
    from wasync.runtime.spool import spool_path as path_of

    return path_of(daemon.env["WASYNC_DATA_DIR"], daemon.env["INSTANCE_ID"])


def spool_counts(daemon: DaemonProcess) -> tuple[int, int]:
    """(rows waiting, rows quarantined) in the daemon's spool file, read-only."""
    path = spool_path(daemon)
    if not path.exists():
        return 0, 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        waiting = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return waiting, quarantined
    finally:
        conn.close()


def sqlite_messages(daemon: DaemonProcess) -> int:
    """How many message rows the daemon's SQLite store holds (a progress probe only;
    assertions read through SqliteStore)."""
    path = Path(daemon.env["WASYNC_DATA_DIR"]) / "wasync.db"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def wait_settled(stack: Stack, sim: SimProcess, daemon: DaemonProcess, phones, timeout_s: float = 60.0) -> dict:
    """Until every account is connected with nothing unacknowledged or held in the
    simulator, and the daemon's spool is empty (its file and /diag). Returns /diag."""
    def settled():
        stats = sim.stats()["accounts"]
        for phone in phones:
            s = stats[phone]
            if not s["connected"] or s["unacked"] or s["held"]:
                return None
        waiting, _ = spool_counts(daemon)
        if waiting:
            return None
        status, diag = daemon.get("/diag")
        return diag if status == 200 and diag["spool"]["depth"] == 0 else None

    try:
        return wait_for(settled, timeout_s, "the simulator and the daemon's spool to settle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsim stats: {sim.stats()['accounts']}\nspool: {spool_counts(daemon)}\n"
                             f"{stack.logs()}") from None


def wait_log(daemon: DaemonProcess, text: str, timeout_s: float) -> None:
    def seen():
        return text in daemon.log.read_text(errors="replace") if daemon.log.exists() else False

    wait_for(seen, timeout_s, f"{text!r} in the daemon log")


def stop_and_check_drain(stack: Stack, daemon: DaemonProcess) -> None:
    """SIGTERM: exit 0, the spool file empty, the shutdown line logged."""
    code = daemon.stop()
    assert code == 0, f"wasync run exited {code} on SIGTERM\n{stack.logs()}"
    from wasync.runtime.spool import Spool

    spool = Spool(spool_path(daemon))
    try:
        assert spool.depth() == 0, f"{spool.depth()} events left in the spool after a SIGTERM drain"
        assert spool.quarantined() == [], spool.quarantined()
    finally:
        spool.close()
    assert SHUTDOWN_LINE in daemon.log.read_text(errors="replace"), stack.logs()


def assert_matches_world(stack: Stack, store, world: dict, accounts: dict[str, str]) -> None:
    problems = gt.compare(store, world, accounts)
    assert not problems, gt.summary(problems) + "\n" + stack.logs(2000)


# --- stores --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def store_kind(request):
    """(name, env for the daemon, open the store in this process)."""
    if request.param == "sqlite":
        return "sqlite", {}, lambda daemon: _sqlite(daemon)
    project = request.getfixturevalue("firestore_project")
    emulator = request.getfixturevalue("firestore_emulator")
    env = {"WASYNC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host, "GOOGLE_CLOUD_PROJECT": project}
    return "firestore", env, lambda daemon: _firestore(project, emulator.host)


def _sqlite(daemon: DaemonProcess):
    from wasync.runtime.store.sqlite import SqliteStore

    return SqliteStore(Path(daemon.env["WASYNC_DATA_DIR"]) / "wasync.db")


def _firestore(project: str, host: str):
    from wasync.runtime.store.firestore import FirestoreStore
    from wasync.runtime.store.firestore_wire import emulator_client

    return FirestoreStore(project, client=emulator_client(project, host))


# --- worlds --------------------------------------------------------------------------------

PHONES = [f"1555000{i:04d}" for i in range(1, 6)]


def generated_world(phones, chats: int, per_chat: int, seed: int = 11) -> dict:
    return {"seed": seed, "timeline": [],
            "accounts": [{"phone": p, "pushName": f"Shop {i}", "initialSyncPerChat": per_chat,
                          "generate": {"chats": chats, "messagesPerChat": per_chat}} for i, p in enumerate(phones)]}


def history_chunks(world: dict, phone: str) -> int:
    """How many HistorySync events the initial sync of `phone` sends."""
    from wasync.runtime.sim.historysync import initial_sync

    account = parse_world(world).account(phone)
    return len(initial_sync([(c, c.messages) for c in account.chats], account.initial_sync_per_chat))


def _pick_chats(account):
    person = next(c for c in account.chats if not c.group)
    other = next(c for c in account.chats if not c.group and c.jid != person.jid)
    group = next(c for c in account.chats if c.group)
    return person, other, group


def _outbound(chat, statuses=("sent", "delivered")) -> list[str]:
    ids = [m.id for m in chat.messages if m.from_me and m.status in statuses]
    return ids or [m.id for m in chat.messages if m.from_me][:1]


def live_timeline(world: dict) -> tuple[list[dict], dict]:
    """Timeline events (injected once the accounts are connected; `at` counts from the
    injection) exercising every message kind, receipts, an offline window with a queued
    and a dropped message, and synthetic traffic. Returns (events, facts for asserts)."""
    parsed = parse_world(world)
    a, b, c, d = (parsed.account(p) for p in PHONES[:4])
    a_person, _, a_group = _pick_chats(a)
    member = next(m.sender for m in a_group.messages if m.sender)
    reacted = a_person.messages[-3].id
    long_text = "Long message " + "x" * 150  # preview keeps the first 100 characters
    b_person, b_other, b_group = _pick_chats(b)
    c_person, _, _ = _pick_chats(c)
    d_person, _, _ = _pick_chats(d)
    A, B, C, D = (x.phone for x in (a, b, c, d))

    def msg(at, phone, chat, mid, **fields):
        return {"at": at, "account": phone, "event": "message", "chat": chat.jid, "id": mid, **fields}

    def receipt(at, phone, chat, ids, kind):
        return {"at": at, "account": phone, "event": "receipt", "chat": chat.jid, "ids": list(ids), "type": kind}

    a_history_out = _outbound(a_person)[:2] + _outbound(a_group)[:1]
    events = [
        # account A: every kind of message, live, in a 1:1 chat and a group
        msg(1.0, A, a_person, "LIVEA01", text="live hello"),
        msg(1.5, A, a_group, "LIVEA02", fromMe=True, type="image", caption="menu of the day"),
        msg(2.0, A, a_group, "LIVEA03", type="video", sender=member),
        msg(2.5, A, a_person, "LIVEA04", type="reaction", target=reacted, text="👍"),
        msg(3.0, A, a_person, "LIVEA05", type="location", text="Harbour Cafe", latitude=38.7, longitude=-9.1),
        msg(3.0, A, a_group, "LIVEA06", type="contact", text="Ana Costa", sender=member),
        msg(3.5, A, a_person, "LIVEA07", fromMe=True, type="document", filename="invoice-7.pdf"),
        msg(4.0, A, a_person, "LIVEA08", type="audio"),
        msg(4.0, A, a_person, "LIVEA09", type="sticker"),
        receipt(5.0, A, a_person, ["LIVEA07"], "delivered"),
        receipt(5.0, A, a_group, ["LIVEA02"], "read"),
        receipt(5.5, A, a_person, a_history_out[:2], "read"),
        receipt(5.5, A, a_group, a_history_out[2:], "played"),
        receipt(7.0, A, a_group, ["LIVEA02"], "played"),
        msg(8.0, A, a_person, "LIVEA10", text=long_text),
        # account B: offline for 30 timeline seconds; one queued message, one dropped
        {"at": 1.0, "account": B, "event": "disconnect", "for": 30},
        msg(5.0, B, b_person, "OFFB01", text="sent while you were away"),
        msg(6.0, B, b_other, "DROPB01", text="this one is lost", offline="drop"),
        receipt(7.0, B, b_person, _outbound(b_person)[:1], "read"),
        msg(8.0, B, b_group, "OFFB02", fromMe=True, text="typed on the phone while offline"),
        msg(40.0, B, b_person, "LIVEB03", text="back online"),
        # the last two messages of the run, 0.3 s apart in one thread after a quiet
        # second: a store that holds thread documents back (Firestore coalesces them to
        # one write per second) must still write the newest
        msg(55.0, B, b_person, "LIVEB04", text="one more thing"),
        msg(58.0, B, b_person, "LIVEB05", type="image"),
        # account C: synthetic traffic, then a sticker as the newest message of a chat
        {"at": 1.0, "account": C, "event": "traffic", "rate": 2.0, "for": 5.0},
        msg(7.0, C, c_person, "LIVEC01", type="sticker"),
        # account D: an image whose caption is the newest thing in its chat
        msg(2.0, D, d_person, "LIVED01", type="image", caption="Caption " + "y" * 120),
    ]
    facts = {"end_at": max(e["at"] + e.get("for", 0) for e in events), "dropped": (B, b_other.jid, "DROPB01"),
             "traffic": (C, 10)}
    return events, facts


# --- 1. the store equals the ground truth -------------------------------------------------


def test_store_equals_ground_truth(stack, store_kind):
    kind, store_env, open_store = store_kind
    world = generated_world(PHONES, chats=10, per_chat=100)
    accounts = {p: f"acct{i}" for i, p in enumerate(PHONES)}
    sim = stack.sim(world, SPEED)
    daemon = stack.daemon(sim, store_env).start()
    for phone, account_id in accounts.items():
        add_account_api(daemon, account_id, phone)
    wait_for(lambda: all(s["connected"] for s in sim.stats()["accounts"].values()), 30, "every account connected")
    events, facts = live_timeline(world)
    injected_at = time.monotonic()
    sim.inject(*[{k: v for k, v in e.items()} for e in events])

    # The timeline is over (real time), then everything the client got is stored.
    wait_for(lambda: time.monotonic() - injected_at > facts["end_at"] / SPEED + 0.5,
             facts["end_at"] / SPEED + 5, "the end of the timeline")
    diag = wait_settled(stack, sim, daemon, PHONES, timeout_s=90)
    assert diag["firestoreConnected"] is True, diag
    assert spool_counts(daemon) == (0, 0)

    world_now = sim.world()
    b_phone, b_chat, dropped = facts["dropped"]
    vias = {m["id"]: m["via"] for a in world_now["accounts"] if a["phone"] == b_phone
            for c in a["chats"] for m in c["messages"]}
    assert vias[dropped] == "dropped" and vias["OFFB01"] == "live" and vias["LIVEB03"] == "live", vias
    c_phone, traffic = facts["traffic"]
    assert gt.count_via(world_now, c_phone)["live"] == traffic + 1
    stats = sim.stats()["accounts"]
    assert stats[b_phone]["connectionsOpened"] >= 2 and stats[b_phone]["dropped"] == 1, stats[b_phone]
    expected = gt.expected(world_now, accounts)
    assert sum(e.total for e in expected.values()) == 5 * 10 * 100 + 10 + 5 + 10 + 1 + 1

    store = open_store(daemon)
    try:
        assert_matches_world(stack, store, world_now, accounts)
        # The dropped message is nowhere, and so are protocol messages: nothing under
        # the account's own JID, and per account exactly the expected count.
        assert store.get_message(accounts[b_phone], b_chat, dropped) is None
        for phone, account_id in accounts.items():
            assert store.get_thread(f"{account_id}__{gt.own_jid(phone)}") is None
            assert gt.stored_count(store, account_id) == expected[account_id].total
        for phone, account_id in accounts.items():  # every history chunk counted once
            account = store.get_account(account_id)
            assert account["historySyncCount"] == history_chunks(world, phone), account
            assert account["lastHistorySyncResult"]["errors"] == 0, account
    finally:
        store.close()

    stop_and_check_drain(stack, daemon)


# --- 2. SIGKILL in the middle of the history burst ------------------------------------------


def test_crash_during_history_sync_loses_nothing(stack):
    phones = PHONES[:3]
    world = generated_world(phones, chats=20, per_chat=300, seed=23)
    accounts = {p: f"crash{i}" for i, p in enumerate(phones)}
    total = len(phones) * 20 * 300
    sim = stack.sim(world, 1.0)
    first = stack.daemon(sim, {}, name="node")
    for phone, account_id in accounts.items():
        add_account_cli(first, account_id, phone)  # before the start: the burst begins at once
    first.start()
    # Kill on the first sign of history being ingested, while most of it is not stored.
    wait_for(lambda: sqlite_messages(first) > 0, 60, "the first stored history messages")
    first.kill()
    stored_at_kill = sqlite_messages(first)
    waiting_at_kill, _ = spool_counts(first)
    unacked_at_kill = sum(s["unacked"] for s in sim.stats()["accounts"].values())
    assert 0 < stored_at_kill < total, f"the kill came too late: {stored_at_kill} of {total} stored\n{stack.logs()}"
    assert waiting_at_kill + unacked_at_kill > 0, "nothing was left to recover: the test proves nothing"

    second = stack.daemon(sim, {}, name="node")  # same data dir, sessions and spool
    second.start()
    wait_settled(stack, sim, second, phones, timeout_s=120)
    if waiting_at_kill:
        assert "spool holds" in second.log.read_text(errors="replace"), stack.logs()
    store = _sqlite(second)
    try:
        assert_matches_world(stack, store, sim.world(), accounts)
        assert sum(gt.stored_count(store, a) for a in accounts.values()) == total
    finally:
        store.close()
    stop_and_check_drain(stack, second)


# --- 3. Firestore outage: the emulator frozen for 20 s ----------------------------------------


@pytest.mark.firestore
def test_store_outage_loses_nothing(stack):
    # A separate emulator of our own: freezing it must not touch other tests' store.
    emulator = FirestoreEmulator().start()
    stack.emulators.append(emulator)
    project = "outage-test"
    phones = PHONES[:2]
    world = generated_world(phones, chats=4, per_chat=20, seed=5)
    accounts = {p: f"out{i}" for i, p in enumerate(phones)}
    traffic_s = 40.0
    sim = stack.sim(world, 1.0)
    env = {"WASYNC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host, "GOOGLE_CLOUD_PROJECT": project}
    daemon = stack.daemon(sim, env).start()
    for phone, account_id in accounts.items():
        add_account_api(daemon, account_id, phone)
    wait_settled(stack, sim, daemon, phones, timeout_s=60)  # history stored before the traffic
    sim.inject({"account": phones[0], "event": "traffic", "rate": 5.0, "for": traffic_s},
               {"account": phones[1], "event": "traffic", "rate": 1.0, "for": traffic_s})
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 8, 10, "traffic to run for a while")

    frozen = False

    def thaw():
        nonlocal frozen
        if frozen:
            os.killpg(emulator.proc.pid, signal.SIGCONT)
            frozen = False

    stack.resume.append(thaw)
    os.killpg(emulator.proc.pid, signal.SIGSTOP)
    frozen, outage_started = True, time.monotonic()
    seen: list[tuple[float, bool, float]] = []  # (t, firestoreConnected, seconds /diag took)
    while time.monotonic() - outage_started < 20.0:
        t0 = time.monotonic()
        status, diag = daemon.get("/diag")
        took = time.monotonic() - t0
        assert status == 200, (status, diag)
        seen.append((t0 - outage_started, diag["firestoreConnected"], took))
        time.sleep(0.25)
    thaw()
    slowest = max(took for _, _, took in seen)
    reported_down = [t for t, connected, _ in seen if connected is False]
    print(f"outage: {len(seen)} /diag polls, slowest {slowest:.3f} s, first firestoreConnected=false after "
          f"{reported_down[0] if reported_down else float('nan'):.1f} s")
    assert slowest < 1.0, f"/diag took {slowest:.2f} s during the outage"
    assert reported_down, (f"/diag never reported firestoreConnected=false during a 20 s outage "
                           f"({len(seen)} polls)\n{stack.logs()}")

    wait_for(lambda: time.monotonic() - started > traffic_s + 1, traffic_s + 5, "the end of the traffic")
    diag = wait_settled(stack, sim, daemon, phones, timeout_s=90)
    wait_for(lambda: daemon.get("/diag")[1]["firestoreConnected"], 30, "/diag to report the store back")
    world_now = sim.world()
    live = sum(gt.count_via(world_now, p)["live"] for p in phones)
    assert live == int(5 * traffic_s) + int(1 * traffic_s), live
    store = _firestore(project, emulator.host)
    try:
        assert_matches_world(stack, store, world_now, accounts)
    finally:
        store.close()
    # The monitor saw the store come back (the writer may have failed and recovered, or
    # simply waited out the freeze inside its call).
    assert "the store answers again" in daemon.log.read_text(errors="replace"), stack.logs()
    stop_and_check_drain(stack, daemon)


# --- 4. SIGTERM drains --------------------------------------------------------------------------


def test_sigterm_drains_spool_then_restart_completes(stack):
    phones = PHONES[:2]
    world = generated_world(phones, chats=10, per_chat=300, seed=31)
    accounts = {p: f"drain{i}" for i, p in enumerate(phones)}
    sim = stack.sim(world, 1.0)
    first = stack.daemon(sim, {}, name="node")
    for phone, account_id in accounts.items():
        add_account_cli(first, account_id, phone)
    first.start()
    wait_for(lambda: spool_counts(first)[0] > 0 or sqlite_messages(first) > 0, 60, "the history burst")
    stop_and_check_drain(stack, first)  # in the middle of the burst: what was spooled is stored
    drained = sqlite_messages(first)
    assert drained > 0

    second = stack.daemon(sim, {}, name="node")
    second.start()
    wait_settled(stack, sim, second, phones, timeout_s=60)
    store = _sqlite(second)
    try:
        assert_matches_world(stack, store, sim.world(), accounts)
    finally:
        store.close()
    stop_and_check_drain(stack, second)
