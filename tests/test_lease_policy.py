"""actors/policy/leases.py: table tests with explicit times (a fake clock in numbers)."""
from __future__ import annotations

import pytest

from wasync.actors.policy.leases import (
    GivenUp, Sighting, acquire_reason, acquisition_order, capacity, fair_share, lease_key, live, sighted, stale,
    stop_deadline, takeable_at, to_shed,
)
from wasync.runtime.store.base import Lease

L = 15.0  # lease seconds
REC = Lease("a1", "i2", 4, 1_000_000, 985_000)


def seen_at(lease, t):
    return Sighting(lease_key(lease), t)


TAKEABLE = [
    # id, lease, sighting, expected takeable time
    ("never_written", None, None, float("-inf")),
    ("released", Lease("a1", "i2", 4, 0, 985_000), None, float("-inf")),
    ("not_seen_yet", REC, None, None),
    ("seen_at_100", REC, seen_at(REC, 100.0), 115.0),
    ("seen_record_changed_since", REC, Sighting(("i2", 4, 1, 1), 100.0), None),
]


@pytest.mark.parametrize("lease, sighting, expected", [r[1:] for r in TAKEABLE], ids=[r[0] for r in TAKEABLE])
def test_takeable_at(lease, sighting, expected):
    assert takeable_at(lease, sighting, L) == expected


def test_a_lease_given_up_here_by_its_deadline_is_taken_back_at_once_while_the_record_is_that_one():
    just_renewed = Sighting(lease_key(REC), 100.0)  # a renewal sent before the deadline, landed after it
    assert takeable_at(REC, just_renewed, L, given_up=GivenUp("i2", 4, 990_000)) == float("-inf")
    assert takeable_at(REC, None, L, given_up=GivenUp("i2", 4, 985_000)) == float("-inf")  # not even read twice
    # Not as this process left it: another process took it since, or renewed it later
    # under the same name (two processes given one INSTANCE_ID).
    assert takeable_at(REC, just_renewed, L, given_up=GivenUp("i2", 3, 990_000)) == 115.0
    assert takeable_at(REC, just_renewed, L, given_up=GivenUp("i1", 4, 990_000)) == 115.0
    assert takeable_at(REC, just_renewed, L, given_up=GivenUp("i2", 4, 984_999)) == 115.0


def test_a_sighting_keeps_its_first_time_until_the_record_changes():
    s1 = sighted(None, "k1", 100.0)
    assert sighted(s1, "k1", 110.0) is s1  # unchanged: still since 100
    assert sighted(s1, "k2", 111.0) == Sighting("k2", 111.0)  # renewed: the clock starts again


def test_a_renewing_holder_is_never_taken_over():
    sighting, t = None, 0.0
    for renewal in range(20):  # renewed every L/3, read every L/3 just after
        lease = Lease("a1", "i2", 1, 1_000 + renewal, 1_000 + renewal)
        sighting = sighted(sighting, lease_key(lease), t)
        assert takeable_at(lease, sighting, L) > t
        t += L / 3


def test_a_dead_holder_is_taken_over_a_lease_after_its_last_renewal_was_seen():
    lease = REC
    sighting = None
    for t in (100.0, 105.0, 110.0, 114.9, 115.0):
        sighting = sighted(sighting, lease_key(lease), t)
    assert takeable_at(lease, sighting, L) == 115.0


def test_holder_stops_before_any_candidate_may_take_over():
    sent = 200.0  # the holder sent its last renewal; it reached the store by 200.5
    candidate_first_saw = 200.5  # the earliest a candidate can have seen that record
    assert stop_deadline(sent, L) == 210.0
    assert stop_deadline(sent, L) + L / 3 - 0.5 <= candidate_first_saw + L  # a third of a lease to spare


@pytest.mark.parametrize("accounts, instances, newcomers, share, cap", [
    (60, 3, 0, 20, 20), (61, 3, 0, 21, 21), (60, 4, 0, 15, 15), (60, 4, 1, 15, 16), (0, 3, 0, 0, 0),
    (5, 0, 0, 5, 5), (1, 3, 2, 1, 2), (500, 7, 0, 72, 72),
])
def test_fair_share_and_capacity(accounts, instances, newcomers, share, cap):
    assert fair_share(accounts, instances) == share
    assert capacity(accounts, instances, newcomers) == cap


def test_capacity_covers_every_account():
    for accounts in range(0, 200, 7):
        for instances in range(1, 9):
            assert capacity(accounts, instances, 0) * instances >= accounts


@pytest.mark.parametrize("held, limit, shed", [
    ({"a": 1.0, "b": 2.0, "c": 3.0}, 3, []),
    ({"a": 1.0, "b": 2.0, "c": 3.0}, 1, ["c", "b"]),
    ({"a": 5.0, "b": 5.0, "c": 1.0}, 2, ["a"]),  # ties: by name
    ({}, 0, []),
])
def test_to_shed_gives_up_the_newest(held, limit, shed):
    assert to_shed(held, limit) == shed


def test_instances_live_and_stale():
    sightings = {"me": Sighting("k", 990.0), "busy": Sighting("k", 999.0), "quiet": Sighting("k", 980.0),
                 "dead": Sighting("k", 1000.0 - 5 * L)}
    assert live(sightings, 1000.0, L) == {"me", "busy"}
    assert stale(sightings, 1000.0, L) == {"dead"}


def test_acquisition_order_differs_between_instances_and_is_stable():
    accounts = [f"a{n:02d}" for n in range(40)]
    one, two = acquisition_order(accounts, "i1"), acquisition_order(accounts, "i2")
    assert sorted(one) == accounts and one != two and one == acquisition_order(reversed(accounts), "i1")
    own = [one[-1], one[-3]]
    assert acquisition_order(accounts, "i1", own_first=own) == [one[-3], one[-1]] + [a for a in one if a not in own]
    assert one[:5] != two[:5]


def test_acquire_reason():
    assert acquire_reason(None) == "free"
    assert acquire_reason(Lease("a", "i", 1, 0, 1)) == "released"
    assert acquire_reason(REC) == "expired"
    assert acquire_reason(REC, given_up=GivenUp("i2", 4, 985_000)) == "regained"
    assert acquire_reason(REC, given_up=GivenUp("i2", 3, 985_000)) == "expired"
