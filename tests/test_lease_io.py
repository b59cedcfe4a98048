"""The lease coordinator's store helper on its own: one round, in order, against a real
SQLite store that is slow in fake time."""
from __future__ import annotations

import pykka
import pytest

from wasync.actors import leases_protocol as lp
from wasync.actors.lease_io import LeaseIOActor
from wasync.runtime.clock import FakeClock
from wasync.runtime.store.sqlite import SqliteStore


class SlowSqliteStore(SqliteStore):
    """Each acquisition takes a second of the fake clock (a store under load)."""

    def __init__(self, path, clock: FakeClock):
        super().__init__(path)
        self.clock = clock

    def acquire_lease(self, *args, **kwargs):
        self.clock.advance(1.0)
        return super().acquire_lease(*args, **kwargs)


class Inbox(pykka.ThreadingActor):
    def __init__(self):
        super().__init__()
        self.got = []

    def on_receive(self, message):
        self.got.append(message)


@pytest.fixture
def rig(tmp_path):
    clock = FakeClock()
    store = SlowSqliteStore(tmp_path / "store.db", clock)
    inbox = Inbox.start()
    io = LeaseIOActor.start(store, inbox, clock, instance_id="i-a", incarnation="x", lease_ms=15_000,
                            started_at_ms=clock.wall_ms(), version="test")
    yield clock, store, inbox, io
    pykka.ActorRegistry.stop_all(timeout=10)
    store.close()


def test_takeovers_stop_at_their_budget_so_the_next_renewal_is_not_held_back(rig):
    clock, store, inbox, io = rig
    now = clock.monotonic_s()
    wanted = tuple((f"a{n:02d}", None) for n in range(10))
    io.ask(lp.Round(now, acquire=wanted, acquire_until_s=now + 2.5))
    [done] = inbox.proxy().got.get()
    assert done.error is None
    # sent at +0, +1, +2 (each takes a second); the fourth would start at +3, past the budget
    assert [lease.account_id for lease, _, _ in done.acquired] == ["a00", "a01", "a02"]
    assert [sent for _, _, sent in done.acquired] == [now, now + 1, now + 2]
    assert len(store.list_leases()) == 3 and done.leases is not None  # the round went on: heartbeat, read


def test_one_takeover_per_round_even_when_the_renewals_used_up_the_budget(rig):
    clock, store, inbox, io = rig
    now = clock.monotonic_s()
    io.ask(lp.Round(now, acquire=(("a00", None), ("a01", None)), acquire_until_s=now - 1))
    [done] = inbox.proxy().got.get()
    assert [lease.account_id for lease, _, _ in done.acquired] == ["a00"]
