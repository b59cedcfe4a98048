"""End to end: backfill, recent-sync and thread repair with a real `wasync sim` and real
`wasync run` processes. The simulator's ground truth is the judge.

The world: phones hold far more history than their initial sync sends (10 of 60 per
chat), and some messages were delivered while no daemon ran, with `offline: drop` (lost
for the client: only history requests bring them back). After auto-backfill and
recent-sync, the store holds every message of the world exactly once and every thread
describes its newest message. Around that: a SIGKILL in the middle of a backfill (the
next run resumes from the stored cursors, no duplicates) and two instances sharing the
accounts (never two runs of one account at once).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

import groundtruth as gt
from daemonproc import DaemonProcess
from simproc import SimProcess, wait_for
from test_e2e_ingest import Stack, _sqlite, store_kind  # noqa: F401  (fixture)
from wasync.runtime.model import thread_id
from wasync.runtime.sim.world import parse_world

pytestmark = pytest.mark.slow

P1, P2 = "15550003001", "15550003002"
FAST = {  # ticks of seconds instead of minutes; every run may follow the previous one
    "WHATSAPP_BACKFILL_INTERVAL_SECONDS": "2", "WHATSAPP_BACKFILL_COOLDOWN_MINUTES": "0",
    "AUTO_BACKFILL_ATTEMPT_BACKOFF_MS": "1000", "RECENT_SYNC_INTERVAL_MS": "2000",
    "AUTO_BACKFILL_MAX_ACCOUNTS_PER_TICK": "4",
}


def world(phones, chats: int, per_chat: int, initial: int) -> dict:
    return {"seed": 5, "timeline": [],
            "accounts": [{"phone": p, "pushName": f"Shop {i}", "initialSyncPerChat": initial,
                          "generate": {"chats": chats, "messagesPerChat": per_chat}} for i, p in enumerate(phones)]}


def received(w: dict, phone: str) -> dict[str, dict[str, dict]]:
    """chat -> id -> message: everything of the world the client should end up with
    (history, live, and what was dropped while nobody listened)."""
    acct = next(a for a in w["accounts"] if a["phone"] == phone)
    return {c["jid"]: {m["id"]: m for m in c["messages"] if m["via"] in ("history", "live", "dropped")}
            for c in acct["chats"]}


def problems(store, account_id: str, w: dict, phone: str) -> list[str]:
    """Differences between the store and the world: missing, extra or repeated messages,
    thread fields not describing the newest message."""
    out = []
    for chat, msgs in received(w, phone).items():
        tid = thread_id(account_id, chat)
        stored = [d["id"] for d in gt.all_messages(store, account_id, tid)]
        if len(stored) != len(set(stored)):
            out.append(f"{chat}: {len(stored) - len(set(stored))} repeated")
        missing, extra = set(msgs) - set(stored), set(stored) - set(msgs)
        if missing:
            out.append(f"{chat}: {len(missing)} of {len(msgs)} missing")
        if extra:
            out.append(f"{chat}: {len(extra)} not in the world")
        if not msgs:
            continue
        thread = store.get_thread(tid) or {}
        newest_s = max(m["ts"] for m in msgs.values())  # the world says seconds; live messages carry ms
        if (thread.get("lastMessageAtMs") or 0) // 1000 != newest_s:
            out.append(f"{chat}: lastMessageAtMs {thread.get('lastMessageAtMs')} is not in second {newest_s}")
        newest = [m for m in msgs.values() if m["ts"] == newest_s]
        if thread.get("lastMessagePreview") not in {gt.expected_preview(m) for m in newest}:
            out.append(f"{chat}: lastMessagePreview {thread.get('lastMessagePreview')!r}")
    return out


def completeness(store, account_id: str, w: dict, phone: str) -> tuple[int, int]:
    """(stored, in the world) for the account."""
    want = received(w, phone)
    have = sum(len({d["id"] for d in gt.all_messages(store, account_id, thread_id(account_id, chat))} & set(msgs))
               for chat, msgs in want.items())
    return have, sum(len(m) for m in want.values())


def until_complete(store, account_id: str, sim: SimProcess, phone: str, stack: Stack, timeout_s: float) -> None:
    """Wait until the store matches the world for the account; on timeout say what differs."""
    last: list[str] = []

    def check() -> bool:
        last[:] = problems(store, account_id, sim.world(), phone)
        return not last

    try:
        wait_for(check, timeout_s=timeout_s, what=f"{account_id} complete")
    except AssertionError:
        lines = [ln for d in stack.daemons for ln in d.tail(400_000).splitlines()
                 if "backfill" in ln or "recent-sync" in ln or "schema-guard" in ln or "ERROR" in ln]
        raise AssertionError("\n".join(last[:20] + lines[-40:])) from None


def add(daemon: DaemonProcess, account_id: str, phone: str) -> None:
    code, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": account_id, "phone": phone})
    assert code == 201, body


def dropped_timeline(w: dict, phone: str, per_chat: int) -> list[dict]:
    """`per_chat` messages in each of the account's first three chats, lost for the client."""
    account = parse_world(w).account(phone)
    return [{"at": 0.1 + 0.05 * i, "account": phone, "event": "message", "chat": chat.jid,
             "id": f"DROP{n}{i:02d}{phone[-2:]}", "text": f"missed {i}", "offline": "drop"}
            for n, chat in enumerate(_people(account)) for i in range(per_chat)]


def _people(account) -> list:
    """The account's first three one-to-one chats (a group's inbound messages need a sender)."""
    return [c for c in account.chats if not c.group][:3]


def test_auto_backfill_and_recent_sync_complete_the_world(tmp_path, store_kind):  # noqa: F811
    name, store_env, open_store = store_kind
    stack = Stack(tmp_path)
    try:
        w = world([P1, P2], chats=5, per_chat=60, initial=10)
        w["timeline"] = dropped_timeline(w, P1, 4)
        sim = stack.sim(w, speed=1.0)
        wait_for(lambda: sim.stats()["accounts"][P1]["dropped"] == 12, what="the messages lost while nobody listened")
        daemon = stack.daemon(sim, {**store_env, **FAST}).start()
        add(daemon, "acc1", P1)
        add(daemon, "acc2", P2)
        wait_for(lambda: all(sim.stats()["accounts"][p]["connected"] for p in (P1, P2)), what="both connected")
        # live messages after the gap: the dropped ones now sit between history and these
        chats = _people(parse_world(w).account(P1))
        sim.inject(*({"at": 0.2 * i, "account": P1, "event": "message", "chat": c.jid, "id": f"LATE{n}{i}",
                      "text": f"after the gap {i}"} for n, c in enumerate(chats) for i in range(3)))
        store = open_store(daemon)
        started = time.monotonic()
        initial = wait_for(lambda: (c := completeness(store, "acc2", sim.world(), P2))[0] >= 50 and c,
                           what="acc2's initial history sync")
        print(f"\n[completeness] store={name} account=acc2 after the initial sync: {initial[0]} of {initial[1]}")
        for account_id, phone in (("acc1", P1), ("acc2", P2)):
            until_complete(store, account_id, sim, phone, stack, 90)
        took = time.monotonic() - started
        final = sim.world()
        for account_id, phone in (("acc1", P1), ("acc2", P2)):
            have, total = completeness(store, account_id, final, phone)
            code, status = daemon.get(f"/api/admin/backfill/{account_id}/status")
            assert code == 200, status
            c = status["completeness"]
            print(f"\n[completeness] store={name} account={account_id} stored {have} of {total} world messages "
                  f"({100 * have / total:.1f} %) in {took:.1f} s; threads complete={c['complete']} "
                  f"incomplete={c['incomplete']} unreachable={c['unreachable']} onDemand={status['onDemand']}")
            assert have == total
            assert status["onDemand"] == "available" and c["complete"] == c["threads"] == 5
            assert c["messagesStored"] == total
        # what was lost came back through recent-sync (behind the newest message), what the
        # initial sync left out through the backfill's walk back
        lost = store.get_message("acc1", chats[0].jid, f"DROP0{0:02d}{P1[-2:]}")
        assert lost is not None and lost["syncSource"] == "recent_sync"
        oldest = min(received(final, P1)[chats[0].jid].values(), key=lambda m: m["ts"])
        assert store.get_message("acc1", chats[0].jid, oldest["id"])["syncSource"] == "backfill"
        doc = store.get_account("acc1")
        assert doc["lastAutoBackfillStatus"]["ok"] is True and doc["lastBackfillStatus"] == "success"
        assert doc["lastRecentSyncResult"]["ok"] is True and doc.get("lastAutoRepairAt")
        metrics = daemon.request("GET", "/metrics")[1]
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        assert re.search(r'wasync_backfill_runs_total\{result="ok"\} [1-9]', metrics)
        assert re.search(r'wasync_backfill_messages_total\{run="backfill"\} [1-9]', metrics)
        assert "[auto-backfill] accountId=acc1" in daemon.tail(200_000)
        assert sim.stats()["accounts"][P1]["historyRequests"] > 0
    finally:
        stack.close()


def test_a_crash_in_the_middle_of_a_backfill_resumes_without_duplicates(tmp_path):
    stack = Stack(tmp_path)
    try:
        w = world([P1], chats=6, per_chat=250, initial=5)
        sim = stack.sim(w, speed=1.0)
        env = {**FAST, "WHATSAPP_BACKFILL_MESSAGES_PER_THREAD": "5", "WHATSAPP_BACKFILL_COUNT": "300",
               "RECENT_SYNC_ENABLED": "false"}
        daemon = stack.daemon(sim, env).start()
        add(daemon, "acc1", P1)

        def walking():
            code, status = daemon.get("/api/admin/backfill/acc1/status")
            running = status.get("running") if code == 200 else None
            return running if running and running["threadsDone"] >= 2 else None

        at_kill = wait_for(walking, timeout_s=60, what="a backfill half-way")
        daemon.kill()  # SIGKILL: the run's lock and "running" status stay behind
        store = _sqlite(daemon)
        half = completeness(store, "acc1", sim.world(), P1)[0]
        assert store.get_account("acc1")["lastAutoBackfillStatus"]["running"] is True
        daemon.start()
        until_complete(store, "acc1", sim, P1, stack, 120)
        have, total = completeness(store, "acc1", sim.world(), P1)
        print(f"\n[completeness] killed at threads {at_kill['threadsDone']}/{at_kill['threadsTotal']} with {half} "
              f"stored; after the restart {have} of {total}")
        assert have == total
        assert wait_for(lambda: store.get_account("acc1")["lastBackfillStatus"] == "success", what="success stored")

        # by hand, from the command line, following the run to its end
        cli = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "backfill", "acc1", "--wait"],
                             env=daemon.env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "backfill of acc1 started" in cli.stderr
        assert "completeness: 6 complete, 0 incomplete, 0 unreachable of 6 threads; 1500 messages stored" in cli.stdout
        again = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "backfill", "nosuch"],
                               env=daemon.env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "no account nosuch" in again.stderr
    finally:
        stack.close()


_LOCK = re.compile(r"^(\S+ \S+) .*\[backfill-lock\] accountId=(\S+) job=backfill acquired")
_END = re.compile(r"^(\S+ \S+) .*\[auto-backfill\] accountId=(\S+) trigger=\S+ result=")


def _runs(log: Path) -> dict[str, list[tuple[float, float]]]:
    """account -> [(acquired, ended)] from a daemon's log (its clock, milliseconds)."""
    def at(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    open_runs, out = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        if m := _LOCK.match(line):
            open_runs[m[2]] = at(m[1])
        elif (m := _END.match(line)) and m[2] in open_runs:
            out.setdefault(m[2], []).append((open_runs.pop(m[2]), at(m[1])))
    for account, began in open_runs.items():
        out.setdefault(account, []).append((began, float("inf")))
    return out


def test_two_instances_never_run_a_backfill_of_one_account_at_once(tmp_path):
    """Two processes on one SQLite file share four accounts; the second joins while the
    first runs backfills back to back, so accounts move mid-run. Every run of an account
    (lock acquired .. result logged) on one instance is disjoint from every run of it on
    the other."""
    stack = Stack(tmp_path)
    try:
        phones = [f"155500040{i:02d}" for i in range(4)]
        sim = stack.sim(world(phones, chats=4, per_chat=120, initial=5), speed=1.0)
        shared = {**FAST, "WHATSAPP_BACKFILL_MESSAGES_PER_THREAD": "5", "WASYNC_LEASE_MS": "3000",
                  "WASYNC_DATA_DIR": str(tmp_path / "shared"), "RECENT_SYNC_ENABLED": "false"}
        first = stack.daemon(sim, shared, name="one").start()
        for i, phone in enumerate(phones):
            add(first, f"acc{i}", phone)
        wait_for(lambda: "[backfill-lock] accountId=" in first.tail(100_000), timeout_s=60, what="runs begin")
        second = stack.daemon(sim, shared, name="two").start()
        wait_for(lambda: "[backfill-lock] accountId=" in second.tail(100_000), timeout_s=60,
                 what="the second instance runs backfills too")
        time.sleep(5)
        a, b = _runs(first.log), _runs(second.log)
        overlaps = [(acct, x, y) for acct in a.keys() & b.keys() for x in a[acct] for y in b[acct]
                    if x[0] < y[1] and y[0] < x[1]]
        assert not overlaps, overlaps
        assert sum(len(v) for v in a.values()) and sum(len(v) for v in b.values())
        assert all(sim.stats()["accounts"][p]["streamReplaced"] == 0 for p in phones)
    finally:
        stack.close()
