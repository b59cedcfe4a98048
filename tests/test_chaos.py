"""Several instances for real (issue 12): three `wasync run` processes, one `wasync sim`,
one Firestore emulator, 60 accounts with live traffic. The simulator's counts are the
judge: who is connected, how often a second socket kicked the first (StreamReplaced),
and at the end whether every message of the world is stored exactly once.

The scenarios run in order on one cluster (each leaves three or four healthy instances):
SIGKILL (takeover within lease + 5 s; the restarted process replays its spool), SIGTERM
(handover within 5 s), SIGSTOP for two leases (others take over; the woken instance stops
its sockets and never reconnects them), a fourth instance joining (spread within one of
the fair share within two leases), a 30 s store outage (everything back within 30 s).
Leases are 6 s here (renewed every 2 s) so the whole module runs in a few minutes.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

import pytest

import groundtruth as gt
from daemonproc import DaemonProcess
from emulator import FirestoreEmulator
from simproc import SimProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.firestore]

LEASE_S = 6.0
ACCOUNTS = 60
PHONES = [f"1555007{n:04d}" for n in range(ACCOUNTS)]
IDS = {phone: f"c{n:02d}" for n, phone in enumerate(PHONES)}
PROJECT = "chaos"
ALICE = "15552223333@s.whatsapp.net"


def world() -> dict:
    return {"seed": 12, "accounts": [
        {"phone": p, "initialSyncPerChat": 3, "chats": [
            {"jid": ALICE, "name": "Alice", "messages": [{"id": f"H{p[-5:]}", "ts": 1763900000, "text": "old"}]},
            {"jid": "15554445555@s.whatsapp.net", "name": "Bob",
             "messages": [{"id": f"B{p[-5:]}", "ts": 1763900050, "text": "hello"}]}]} for p in PHONES]}


class Cluster:
    def __init__(self, base: Path, emulator: FirestoreEmulator, sim: SimProcess):
        self.base, self.emulator, self.sim = base, emulator, sim
        self.daemons: dict[str, DaemonProcess] = {}
        self.emulator_frozen = False

    def start(self, name: str) -> DaemonProcess:
        """Start instance `name` (again: same INSTANCE_ID and data dir, as a process manager would)."""
        daemon = self.daemons.get(name) or DaemonProcess(self.base / name, {
            "INSTANCE_ID": name, "WASYNC_TRANSPORT": self.sim.address, "WASYNC_STORE": "firestore",
            "FIRESTORE_EMULATOR_HOST": self.emulator.host, "GOOGLE_CLOUD_PROJECT": PROJECT,
            "WASYNC_LEASE_MS": str(int(LEASE_S * 1000)), "WASYNC_MAX_STARTS_PER_SECOND": "30"})
        self.daemons[name] = daemon.start(timeout_s=60)
        return daemon

    def alive(self) -> list[DaemonProcess]:
        return [d for d in self.daemons.values() if d.proc is not None and d.proc.poll() is None]

    def store(self):
        from wasync.runtime.store.firestore import FirestoreStore
        from wasync.runtime.store.firestore_wire import emulator_client

        return FirestoreStore(PROJECT, client=emulator_client(PROJECT, self.emulator.host))

    def holders(self) -> dict[str, Optional[str]]:
        """account id -> the instance holding its lease (None: free or released)."""
        store = self.store()
        try:
            leases = {lease.account_id: lease for lease in store.list_leases()}
        finally:
            store.close()
        return {a: (leases[a].holder if a in leases and not leases[a].released else None) for a in IDS.values()}

    def held_by(self, name: str) -> set[str]:
        return {a for a, h in self.holders().items() if h == name}

    def stats(self) -> dict:
        return self.sim.stats()["accounts"]

    def all_connected(self) -> bool:
        stats = self.stats()
        return all(stats[p]["connected"] for p in PHONES)

    def not_connected(self) -> str:
        """For failure messages: each account not connected, who holds it, what its holder logged."""
        stats, holders = self.stats(), self.holders()
        lines = []
        for p in PHONES:
            if not stats[p]["connected"]:
                account_id, holder = IDS[p], holders[IDS[p]]
                logged = [line for d in self.daemons.values() if d.log.exists()
                          for line in d.log.read_text(errors="replace").splitlines() if f"={account_id} " in line]
                lines.append(f"{account_id} held by {holder}: " + " | ".join(logged[-6:]))
        return "\n".join(lines)

    def stream_replaced(self) -> dict[str, int]:
        stats = self.stats()
        return {IDS[p]: stats[p]["streamReplaced"] for p in PHONES}

    def traffic(self, seconds: float, rate: float = 0.2) -> None:
        self.sim.inject(*({"account": p, "event": "traffic", "rate": rate, "for": seconds} for p in PHONES))

    def reconnected_after(self, accounts: set[str], t0_ms: int) -> Optional[float]:
        """Seconds from t0 until the last of `accounts` was connected again, or None."""
        stats = self.stats()
        by_id = {IDS[p]: p for p in PHONES}
        firsts = []
        for account_id in accounts:
            s = stats[by_id[account_id]]
            later = [t for t in s["connectedAtMs"] if t > t0_ms]
            if not s["connected"] or not later:
                return None
            firsts.append(later[0])
        return (max(firsts) - t0_ms) / 1000 if firsts else 0.0

    def metric(self, daemon: DaemonProcess, name: str) -> float:
        text = daemon.get("/metrics")[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def logs(self) -> str:
        return "\n".join(f"--- {d.log.name}\n{d.tail(3000)}" for d in self.daemons.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaos")
    emulator = FirestoreEmulator().start()
    sim = SimProcess(world(), base / "sim", speed=1).start()
    c = Cluster(base, emulator, sim)
    try:
        for name in ("n1", "n2", "n3"):
            c.start(name)
        first = c.daemons["n1"]
        for phone, account_id in IDS.items():
            status, body = first.request("POST", "/api/whatsapp/accounts", {"accountId": account_id, "phone": phone})
            assert status == 201, body
        wait_for(c.all_connected, 90, "all 60 accounts connected")
        wait_for(lambda: sorted(len(c.held_by(n)) for n in ("n1", "n2", "n3")) == [20, 20, 20], 4 * LEASE_S,
                 "the accounts spread 20/20/20")
        yield c
    finally:
        if c.emulator_frozen:
            os.killpg(emulator.proc.pid, signal.SIGCONT)
        for d in c.daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                try:
                    os.kill(d.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                d.stop()
        sim.stop()
        emulator.stop()


def test_sigkill_accounts_taken_over_within_a_lease_and_the_restart_replays(cluster):
    cluster.traffic(LEASE_S * 4)
    victim = cluster.daemons["n2"]
    theirs = cluster.held_by("n2")
    before = cluster.stream_replaced()
    t0 = int(time.time() * 1000)
    victim.kill()
    took = wait_for(lambda: cluster.reconnected_after(theirs, t0), LEASE_S + 20, "n2's accounts elsewhere")
    print(f"SIGKILL: {len(theirs)} accounts connected elsewhere {took:.1f} s after the kill (lease {LEASE_S:g} s)")
    assert took <= LEASE_S + 5, took
    assert cluster.held_by("n2") == set()
    cluster.start("n2")  # its process manager starts it again: its spool is replayed
    wait_for(lambda: len(cluster.held_by("n2")) >= 18, 4 * LEASE_S, "n2 back to its share")
    wait_for(cluster.all_connected, 30, "all connected")
    after = cluster.stream_replaced()
    assert after == before, {a: after[a] - before[a] for a in after if after[a] != before[a]}


def test_sigterm_hands_over_within_5_s(cluster):
    victim = cluster.daemons["n1"]
    theirs = cluster.held_by("n1")
    before = cluster.stream_replaced()
    t0 = int(time.time() * 1000)
    assert victim.stop() == 0
    took = wait_for(lambda: cluster.reconnected_after(theirs, t0), 30, "n1's accounts elsewhere")
    print(f"SIGTERM: {len(theirs)} accounts handed over in {took:.1f} s")
    assert took <= 5.0, took
    assert "[lease] releasing" in victim.log.read_text()
    assert cluster.stream_replaced() == before
    cluster.start("n1")
    wait_for(lambda: len(cluster.held_by("n1")) >= 18, 4 * LEASE_S, "n1 back to its share")


def test_sigstop_for_two_leases_others_take_over_and_the_woken_one_never_fights(cluster):
    cluster.traffic(LEASE_S * 4)
    victim = cluster.daemons["n3"]
    theirs = cluster.held_by("n3")
    before = cluster.stream_replaced()
    t0 = int(time.time() * 1000)
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        took = wait_for(lambda: cluster.reconnected_after(theirs, t0), 2 * LEASE_S + 10, "n3's accounts elsewhere")
        time.sleep(max(0.0, 2 * LEASE_S - (time.time() * 1000 - t0) / 1000))
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    print(f"SIGSTOP: {len(theirs)} accounts taken over in {took:.1f} s")
    statuses = cluster.store()
    try:
        moved = {a: statuses.get_account(a)["status"] for a in sorted(theirs)}
    finally:
        statuses.close()
    # Awake again it is a live instance: it gets its share back, but only by graceful
    # handover (a lease released after its holder stopped the socket), never by fighting:
    # a fight would kick sockets again (StreamReplaced) and show two sockets at once.
    deadline = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < deadline:
        assert all(s["concurrent"] <= 1 for s in cluster.stats().values()), "two sockets for one account"
        time.sleep(0.25)
    after = cluster.stream_replaced()
    kicked = {a: after[a] - before[a] for a in after if after[a] != before[a]}
    print(f"SIGSTOP: StreamReplaced {sum(kicked.values())} (one per moved account at most, the frozen socket), "
          f"stale writes refused {cluster.metric(victim, 'wasync_stale_fence_rejections_total'):.0f}")
    assert set(kicked) <= theirs and all(n <= 1 for n in kicked.values()), kicked
    assert "StreamReplaced" in victim.log.read_text() or not kicked
    assert set(moved.values()) == {"connected"}, moved  # as their new holders wrote it, not the woken one
    wait_for(lambda: sorted(len(cluster.held_by(n)) for n in ("n1", "n2", "n3")) == [20, 20, 20], 4 * LEASE_S,
             "the accounts spread again")


def test_a_fourth_instance_gets_its_share_within_two_leases(cluster):
    before = cluster.stream_replaced()
    t0 = time.monotonic()
    cluster.start("n4")

    def spread():
        counts = sorted(len(cluster.held_by(n)) for n in ("n1", "n2", "n3", "n4"))
        return counts if counts[0] >= 14 and counts[-1] <= 16 and sum(counts) == ACCOUNTS else None

    counts = wait_for(spread, 2 * LEASE_S + 5, "within one of the fair share (15)")
    print(f"join: {counts} after {time.monotonic() - t0:.1f} s")
    try:
        wait_for(cluster.all_connected, 30, "all connected")
    except AssertionError:
        raise AssertionError(cluster.not_connected()) from None
    assert cluster.stream_replaced() == before


def test_a_30_s_store_outage_loses_nothing_and_everything_is_back_within_30_s(cluster):
    cluster.traffic(40)
    before = cluster.stream_replaced()
    os.killpg(cluster.emulator.proc.pid, signal.SIGSTOP)
    cluster.emulator_frozen = True
    frozen_at = time.monotonic()
    try:
        # Nobody can renew: every holder stops its sockets at 2/3 of a lease, before anyone may take over.
        wait_for(lambda: not any(s["connected"] for s in cluster.stats().values()), LEASE_S + 10,
                 "every socket stopped while the store is away")
        stopped_after = time.monotonic() - frozen_at
        time.sleep(max(0.0, 30 - (time.monotonic() - frozen_at)))
    finally:
        os.killpg(cluster.emulator.proc.pid, signal.SIGCONT)
        cluster.emulator_frozen = False
    back = time.monotonic()
    wait_for(cluster.all_connected, 30, "every account connected again")
    print(f"outage: sockets stopped {stopped_after:.1f} s into it; all back {time.monotonic() - back:.1f} s "
          "after the store returned")
    assert cluster.stream_replaced() == before


def test_every_message_is_stored_exactly_once(cluster):
    def settled():
        stats = cluster.stats()
        if not all(stats[p]["connected"] and not stats[p]["held"] and not stats[p]["unacked"] for p in PHONES):
            return False
        return all(d.get("/diag")[1]["spool"]["depth"] == 0 for d in cluster.alive())

    time.sleep(5)  # the last traffic ends
    wait_for(settled, 90, "every account settled and every spool empty")
    world_now = cluster.sim.world()
    store = cluster.store()
    try:
        problems = gt.compare(store, world_now, IDS)
    finally:
        store.close()
    live = sum(gt.count_via(world_now, p)["live"] for p in PHONES)
    print(f"ground truth: {live} live messages over the scenarios, {len(problems)} problems")
    assert not problems, gt.summary(problems) + "\n" + cluster.logs()
    assert live > 500
