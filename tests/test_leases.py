"""The lease coordinator with several instances in one process: real systems
(build_system) sharing one SQLite store file, each on its own FakeClock, moved together.
Who runs what, takeover only after a whole lease of silence, holders stopping before
that, graceful handover, rebalancing, fencing. Real processes: test_chaos.py."""
from __future__ import annotations

import pykka
import pytest

from systemrig import SystemRig
from wasync.actors.account import AccountActor
from wasync.runtime.store.sqlite import SqliteStore

LEASE_S = 15.0
ACCOUNTS = [(f"a{n:02d}", f"155500{n:05d}") for n in range(10)]


class Cluster:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.path = tmp_path / "shared.db"
        self.rigs: dict[str, SystemRig] = {}
        first = SqliteStore(self.path)
        for account_id, phone in ACCOUNTS:
            first.create_account(account_id, phone, 1_763_900_000_000)
        first.close()

    def start(self, name: str, **env) -> SystemRig:
        rig = SystemRig(self.tmp_path / name, store=SqliteStore(self.path, busy_timeout_ms=200, ping_timeout_s=0.05), instance_id=name,
                        **env)
        for account_id, _ in ACCOUNTS:
            rig.transport.connect_on_start.add(account_id)
        self.rigs[name] = rig.start()
        return rig

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Every instance's clock moves together (each rig settles its own actors)."""
        left = seconds
        while left > 1e-9:
            dt = min(step, left)
            for rig in self.live():
                rig.ticker.advance(dt)
            for rig in self.live():
                rig.settle()
            left -= dt

    def live(self) -> list[SystemRig]:
        return [r for r in self.rigs.values() if not r.stopped]

    def running(self) -> dict[str, tuple[str, ...]]:
        return {name: rig.running() for name, rig in self.rigs.items() if not rig.stopped}

    def owners(self) -> dict[str, list[str]]:
        """account -> instances running it (must never be more than one)."""
        out: dict[str, list[str]] = {a: [] for a, _ in ACCOUNTS}
        for name, accounts in self.running().items():
            for account_id in accounts:
                out[account_id].append(name)
        return out

    def crash(self, name: str) -> None:
        """The instance dies: its sockets go, its leases and heartbeat stay as they were."""
        rig = self.rigs[name]
        rig.stopped = True
        s = rig.system
        for ref in (s.leases, s.monitor, s.sweeper, s.supervisor):
            ref.stop()
        rig.transport.release()
        s.writer.stop()
        s.store.close()
        s.spool.close()

    def stop_all(self) -> None:
        for rig in self.live():
            rig.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop_all()
    pykka.ActorRegistry.stop_all(timeout=10)


def assert_one_owner_each(cluster, allow_unowned=False):
    owners = cluster.owners()
    assert all(len(o) <= 1 for o in owners.values()), owners
    if not allow_unowned:
        assert all(len(o) == 1 for o in owners.values()), owners


def test_two_instances_share_the_accounts_and_never_run_one_twice(cluster):
    a = cluster.start("i-a")
    b = cluster.start("i-b")
    for _ in range(12):  # two leases, in steps, checking as it goes
        cluster.advance(2.5)
        assert_one_owner_each(cluster, allow_unowned=True)
    assert_one_owner_each(cluster)
    counts = sorted(len(r) for r in cluster.running().values())
    assert counts == [5, 5], cluster.running()
    assert a.metrics.leases_held._value.get() + b.metrics.leases_held._value.get() == 10
    view = a.board.snapshot().leases
    assert view.mode == "active" and {i.instance_id for i in view.instances if i.live} == {"i-a", "i-b"}


def test_a_dead_instance_is_taken_over_only_after_a_whole_lease(cluster):
    cluster.start("i-a")
    b = cluster.start("i-b")
    cluster.advance(2 * LEASE_S)
    theirs = set(cluster.running()["i-a"])
    assert len(theirs) == 5
    cluster.crash("i-a")
    cluster.advance(LEASE_S - 2.5)  # not yet: its last renewal may be a whole lease old only later
    assert not theirs & set(b.running())
    cluster.advance(2 * LEASE_S / 3 + 5)  # a lease after b last saw each record change, plus a round
    assert theirs <= set(b.running()) and len(b.running()) == 10
    assert b.metrics.lease_acquired.labels(reason="expired")._value.get() == 5


def test_a_holder_that_cannot_renew_stops_its_sockets_before_anyone_may_take_over(cluster, tmp_path):
    import sqlite3

    a = cluster.start("i-a")
    cluster.advance(5)
    assert len(a.running()) == 10
    blocker = sqlite3.connect(cluster.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store stops answering a
    try:
        cluster.advance(5)  # renewal sent at ~5 s after the last success: fails
        assert len(a.running()) == 10
        cluster.advance(6)  # 2/3 of a lease (10 s) after the last successful renewal was sent
        assert a.running() == ()
        assert a.metrics.lease_lost.labels(reason="deadline")._value.get() == 10
        assert a.board.snapshot().leases.mode == "passive"
    finally:
        blocker.execute("ROLLBACK")
    cluster.advance(2 * LEASE_S)  # its own leases look unchanged for a whole lease: taken back
    assert len(a.running()) == 10 and a.board.snapshot().leases.mode == "active"


def test_leases_given_up_by_their_deadline_are_taken_back_at_the_first_round_after_the_store_answers(cluster):
    """A renewal sent before the deadline can land after it (the store hung, then answered):
    the record then names this instance, freshly renewed. It used to be waited on for a
    whole lease like a rival's, so every account of a store outage stayed deaf for another
    lease after the store came back (bench/pipeline.py --only outage: 15 s)."""
    import sqlite3

    a = cluster.start("i-a")
    cluster.advance(5)
    assert len(a.running()) == 10
    blocker = sqlite3.connect(cluster.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        cluster.advance(11)  # past the deadline: every socket stopped
        assert a.running() == ()
        assert a.metrics.lease_lost.labels(reason="deadline")._value.get() == 10
    finally:
        blocker.execute("ROLLBACK")
    # What the renewal in flight at the deadline (sent at 15 s, one second ago) writes when
    # it lands now.
    late = a.store.renew_leases(a.store.list_leases(), a.clock.wall_ms() - 1000, int(LEASE_S * 1000))
    assert len(late) == 10
    cluster.advance(LEASE_S / 3 + 1)  # the next round reads them, the one after takes them back
    assert len(a.running()) == 10
    assert a.metrics.lease_acquired.labels(reason="regained")._value.get() == 10
    assert all(lease.epoch == 2 for lease in a.store.list_leases())


def test_the_store_answering_again_brings_a_round_at_once(cluster):
    """The store monitor (every 2 s; every 0.5 s while the store does not answer) tells the
    coordinator: its given-up leases are taken back then, not at the next regular round,
    up to lease/3 later."""
    import sqlite3

    a = cluster.start("i-a")
    cluster.advance(5)
    blocker = sqlite3.connect(cluster.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        cluster.advance(11)  # rounds at 10 and 15 fail; the deadline at 15 stops every socket
        assert a.running() == ()
    finally:
        blocker.execute("ROLLBACK")  # at 16: the next regular round is at 20, the monitor's check at 18
    cluster.advance(1)
    assert len(a.running()) == 10
    assert a.metrics.lease_acquired.labels(reason="regained")._value.get() == 10


def test_sigterm_hands_over_at_once_and_a_newcomer_gets_its_share(cluster):
    a = cluster.start("i-a")
    cluster.advance(5)
    assert len(a.running()) == 10
    b = cluster.start("i-b")
    cluster.advance(2 * LEASE_S)  # a gives up the newest accounts gracefully; b takes them released
    assert sorted(len(r) for r in cluster.running().values()) == [5, 5]
    assert a.metrics.lease_lost.labels(reason="rebalancing")._value.get() == 5
    assert b.metrics.lease_acquired.labels(reason="released")._value.get() == 5
    a.stop()  # SIGTERM: sockets stopped, leases released
    cluster.advance(LEASE_S / 3 + 0.5)  # b's next round finds them released: no lease to wait out
    assert len(b.running()) == 10


def test_a_former_holder_cannot_write_with_its_old_epoch(cluster):
    from wasync.actors.writer_protocol import AccountUpdate
    from wasync.runtime.account import AccountPatch
    from wasync.runtime.model import AccountStatus
    from wasync.runtime.store.base import Fence

    a = cluster.start("i-a")
    cluster.advance(5)
    old = a.store.get_lease("a03")
    cluster.crash("i-a")
    b = cluster.start("i-b")
    cluster.advance(2 * LEASE_S)
    new = b.store.get_lease("a03")
    assert (new.holder, new.epoch) == ("i-b", old.epoch + 1)
    # what i-a would have written had it woken up now
    b.system.writer.tell(AccountUpdate("a03", AccountPatch(status=AccountStatus.LOGGED_OUT), Fence("i-a", old.epoch)))
    cluster.advance(1)
    assert b.metrics.stale_fence_rejections._value.get() == 1
    assert b.store.get_account("a03")["status"] != "logged_out"
    assert len(pykka.ActorRegistry.get_by_class(AccountActor)) == 10  # b still runs all of them


@pytest.mark.timeout(60)  # the bug this guards against spun the deadline timer forever
def test_a_lease_waiting_to_be_released_while_the_store_is_down_keeps_no_deadline(cluster):
    import sqlite3
    import threading

    a = cluster.start("i-a")
    cluster.advance(5)
    gate = a.transport.slow_stop["a00"] = threading.Event()
    a.store.delete_account("a00")
    cluster.advance(LEASE_S / 3)  # the next read: a00 is given up, its socket slow to stop
    assert a.metrics.lease_lost.labels(reason="removed")._value.get() == 1
    blocker = sqlite3.connect(cluster.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store stops answering: a00 cannot be released
    try:
        gate.set()
        a.until(lambda: "a00" not in a.running(), what="a00 stopped")
        cluster.advance(LEASE_S)  # past every deadline: the live ones are lost, a00 only waits
        assert a.running() == ()
        assert a.metrics.lease_lost.labels(reason="deadline")._value.get() == 9
        assert a.system.leases.proxy().held.get().keys() == {"a00"}
    finally:
        blocker.execute("ROLLBACK")
    cluster.advance(LEASE_S / 3 + 0.5)
    assert a.store.get_lease("a00").released
    cluster.advance(2 * LEASE_S)
    assert len(a.running()) == 9


def test_shutdown_keeps_the_leases_of_sessions_that_did_not_stop(cluster):
    """A lease is released only once its socket is closed: another instance taking it
    would connect beside the socket still open here. Sessions stopping already (a lease
    given up) count as much as the running ones; and having left, no heartbeat brings
    the instance document back."""
    import threading

    a = cluster.start("i-a")
    cluster.advance(5)
    for account_id in ("a00", "a01"):
        a.transport.slow_stop[account_id] = threading.Event()
    a.store.delete_account("a01")
    cluster.advance(LEASE_S / 3)  # a01 is being given up; its session is slow to stop
    assert a.metrics.lease_lost.labels(reason="removed")._value.get() == 1
    a.stopped = True
    a.system.stop(drain_s=1)  # a00's session hangs in stop() too
    store = SqliteStore(cluster.path)
    try:
        leases = {lease.account_id: lease for lease in store.list_leases()}
        assert not leases["a00"].released and not leases["a01"].released
        assert all(leases[f"a{n:02d}"].released for n in range(2, 10))
        assert store.list_instances() == []
    finally:
        store.close()
        a.transport.release()


def test_a_store_helper_that_died_is_replaced_and_renewals_go_on(cluster):
    from wasync.actors.lease_io import LeaseIOActor

    a = cluster.start("i-a")
    cluster.advance(5)
    [io] = pykka.ActorRegistry.get_by_class(LeaseIOActor)
    io.stop()
    cluster.advance(2 * LEASE_S)
    assert len(a.running()) == 10 and a.metrics.lease_lost.labels(reason="deadline")._value.get() == 0
    assert a.metrics.actor_failures.labels(actor="lease_io")._value.get() == 1


def test_instances_started_together_share_the_accounts_well_before_a_regular_round(cluster):
    a = cluster.start("i-a")
    cluster.advance(0.5)
    assert len(a.running()) == 10  # the first one up sees only itself: it takes them all
    b = cluster.start("i-b")
    # Joining instances have a round every lease/15: a sheds down to its share (+1 while b
    # is new) and b takes them, long before either's regular round (lease/3) would have.
    cluster.advance(LEASE_S / 3 - 1.0, step=0.25)
    assert len(b.running()) >= 4 and len(a.running()) <= 6
    assert_one_owner_each(cluster)
