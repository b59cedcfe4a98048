"""Accounts coming and going, end to end: a real `wasync run` against a real `wasync sim`.

- The owned set only moves forward: accounts added through the API while the daemon
  reads its account list are started once and never stopped as "removed".
- No spool row is stranded: after accounts are removed, taken over by another client,
  logged out and moved away, the spool empties on its own, and a SIGTERM drains at once.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from simproc import SimProcess, wait_for

pytestmark = pytest.mark.slow

ALICE = "15552223333@s.whatsapp.net"


def world_for(phones, seed=3) -> dict:
    return {"seed": seed, "accounts": [
        {"phone": p, "initialSyncPerChat": 3, "chats": [
            {"jid": ALICE, "name": "Alice", "messages": [{"id": f"H{p[-5:]}", "ts": 1763900000, "text": "old"}]}]}
        for p in phones]}


def add(daemon: DaemonProcess, account_id: str, phone: str) -> None:
    status, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": account_id, "phone": phone})
    assert status == 201, body


def status_of(daemon: DaemonProcess, account_id: str) -> str:
    return daemon.get(f"/api/whatsapp/accounts/{account_id}/health")[1]["status"]


def spool_depth(daemon: DaemonProcess) -> int:
    return daemon.get("/diag")[1]["spool"]["depth"]


def test_accounts_added_while_the_list_is_read_start_once_and_stay(tmp_path):
    phones = [f"1555004{i:04d}" for i in range(100)]
    sim = SimProcess(world_for(phones), tmp_path / "sim", speed=1).start()
    daemon = DaemonProcess(tmp_path / "daemon", {"WASYNC_TRANSPORT": sim.address,
                                                 "WASYNC_MAX_STARTS_PER_SECOND": "50"}).start()
    try:
        def adder(chunk):
            for i, phone in chunk:
                add(daemon, f"f{i:03d}", phone)
                time.sleep(0.01)  # spread over several reads of the account list

        workers = [threading.Thread(target=adder, args=(list(enumerate(phones))[k::4],)) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wait_for(lambda: all(s["connected"] for s in (sim.stats()["accounts"][p] for p in phones)), 60,
                 "every account connected")
        time.sleep(3)  # a few more reads of the account list
        stats = sim.stats()["accounts"]
        opened = {p: stats[p]["connectionsOpened"] for p in phones}
        extra = {p: n for p, n in opened.items() if n != 1}
        log = daemon.log.read_text(errors="replace")
        print(f"100 accounts added concurrently: {sum(opened.values())} connections, "
              f"{log.count('stopped (removed)')} stopped as removed")
        assert not extra, f"accounts connected more than once: {extra}"
        assert "stopped (removed)" not in log
    finally:
        try:
            assert daemon.stop() == 0
        finally:
            sim.stop()


def test_no_row_is_stranded_when_accounts_go_and_sigterm_drains_at_once(tmp_path):
    from wasync.runtime.transport.simulated import SimulatedTransport

    cases = {"stay": "15550050001", "gone": "15550050002", "taken": "15550050003", "out": "15550050004",
             "moved": "15550050005"}
    sim = SimProcess(world_for(cases.values()), tmp_path / "sim", speed=1).start()
    daemon = DaemonProcess(tmp_path / "daemon", {"WASYNC_TRANSPORT": sim.address}).start()
    other = None
    try:
        for account_id, phone in cases.items():
            add(daemon, account_id, phone)
        for account_id in cases:
            wait_for(lambda a=account_id: status_of(daemon, a) == "connected", 30, f"{account_id} connected")
        wait_for(lambda: spool_depth(daemon) == 0, 15, "history stored")

        # removed through the API: its session's last Disconnected is spooled as it stops
        assert daemon.request("DELETE", "/api/whatsapp/accounts/gone")[0] == 200
        # taken over by another client (StreamReplaced): stopped, not restarted within a lease
        host, port = sim.address.removeprefix("sim://").split(":")
        other = SimulatedTransport(host, int(port), tmp_path / "other-sessions")
        intruder = other.open("intruder", cases["taken"], lambda kind, raw: None)
        intruder.start()
        # logged out from the phone: held for re-pairing
        sim.inject({"account": cases["out"], "event": "logout", "reason": "LOGGED_OUT"})
        # moved away: another owner switched it off here (what the lease coordinator will do)
        store = sqlite3.connect(Path(daemon.env["WASYNC_DATA_DIR"]) / "wasync.db")
        store.execute("UPDATE accounts SET doc = json_set(doc, '$.enabled', json('false')) "
                      "WHERE account_id = 'moved'")
        store.commit()
        store.close()
        # traffic for every one of them while they go
        sim.inject(*({"account": p, "event": "message", "chat": ALICE, "text": f"bye {a}"}
                     for a, p in cases.items()))

        wait_for(lambda: status_of(daemon, "taken") == "disconnected" and status_of(daemon, "out") == "logged_out",
                 20, "taken and out held")
        wait_for(lambda: (lambda h: h if h["warning"] == "not running on this instance" else None)(
            daemon.get("/api/whatsapp/accounts/moved/health")[1]), 20, "moved stopped here")
        wait_for(lambda: status_of(daemon, "moved") == "disconnected", 10, "moved's stored status disconnected")
        started = time.monotonic()
        wait_for(lambda: spool_depth(daemon) == 0, 20, "the spool emptied on its own")
        print(f"spool empty {time.monotonic() - started:.1f} s after the last change")
        assert daemon.get("/metrics")[1].decode().count("wasync_spool_oldest_age_seconds 0.0") == 1

        t0 = time.monotonic()
        assert daemon.stop() == 0
        drain_s = time.monotonic() - t0
        log = daemon.log.read_text(errors="replace")
        print(f"SIGTERM → exit {drain_s:.1f} s")
        assert "shutting down: spool empty (0 events left" in log
        assert drain_s < 5, f"drain took {drain_s:.1f} s"
        from wasync.runtime.spool import Spool, spool_path

        spool = Spool(spool_path(daemon.env["WASYNC_DATA_DIR"], daemon.env["INSTANCE_ID"]))
        assert spool.depth() == 0 and spool.quarantined() == []
        spool.close()
    finally:
        if other is not None:
            other.close()
        daemon.kill()
        sim.stop()


def test_a_second_process_with_the_same_instance_id_and_data_dir_is_refused(tmp_path):
    import subprocess
    import sys

    from daemonproc import ROOT

    sim = SimProcess(world_for(["15550060001"]), tmp_path / "sim", speed=1).start()
    first = DaemonProcess(tmp_path / "daemon", {"WASYNC_TRANSPORT": sim.address, "INSTANCE_ID": "same"}).start()
    try:
        env = {**first.env, "PORT": str(first.port + 1)}
        second = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "run"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "in use by another wasync process" in second.stderr and "INSTANCE_ID" in second.stderr
    finally:
        assert first.stop() == 0
        sim.stop()


def test_two_instances_on_one_data_dir_share_the_accounts(tmp_path):
    """README "Running several instances": same data dir (embedded store, session files),
    each process its own INSTANCE_ID and PORT."""
    phones = [f"1555008{i:04d}" for i in range(10)]
    sim = SimProcess(world_for(phones), tmp_path / "sim", speed=1).start()
    common = {"WASYNC_TRANSPORT": sim.address, "WASYNC_LEASE_MS": "3000"}
    a = DaemonProcess(tmp_path / "box", {**common, "INSTANCE_ID": "a"}).start()
    b = DaemonProcess(tmp_path / "box", {**common, "INSTANCE_ID": "b"}).start()
    try:
        for i, phone in enumerate(phones):
            add(a, f"t{i}", phone)

        def spread():
            held = sorted(d.get("/ready")[1]["leases"] for d in (a, b))
            return held if held == [5, 5] else None

        wait_for(spread, 30, "5 accounts on each instance")
        wait_for(lambda: all(s["connected"] for s in (sim.stats()["accounts"][p] for p in phones)), 30,
                 "every account connected")
        wait_for(lambda: {(i["instanceId"], i["live"], i["accountsHeld"]) for i in
                          a.get("/api/status/instances")[1]["instances"]} == {("a", True, 5), ("b", True, 5)}, 10,
                 "a's view of both instances")
        assert all(s["streamReplaced"] == 0 for s in sim.stats()["accounts"].values())
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
        sim.stop()


def test_an_admin_call_for_an_account_another_instance_runs_says_which(tmp_path):
    phones = ["15550090001", "15550090002"]
    sim = SimProcess(world_for(phones), tmp_path / "sim", speed=1).start()
    common = {"WASYNC_TRANSPORT": sim.address, "WASYNC_LEASE_MS": "3000"}
    a = DaemonProcess(tmp_path / "box", {**common, "INSTANCE_ID": "a"}).start()
    b = DaemonProcess(tmp_path / "box", {**common, "INSTANCE_ID": "b"}).start()
    try:
        add(a, "r1", phones[0])
        add(a, "r2", phones[1])
        wait_for(lambda: sorted(d.get("/ready")[1]["leases"] for d in (a, b)) == [1, 1], 30, "one account each")
        holder = wait_for(lambda: a.get("/api/whatsapp/accounts/r1/health")[1]["leaseHolder"], 10, "r1's holder")
        other = b if holder == "a" else a
        status, body = other.request("POST", "/api/whatsapp/regenerate-qr/r1")
        assert status == 409 and body["error"]["code"] == "runs_elsewhere", body
        assert f"runs on instance {holder}" in body["error"]["message"]
        here = a if holder == "a" else b
        assert here.request("POST", "/api/whatsapp/regenerate-qr/r1")[0] == 200
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
        sim.stop()
