"""Lease policy: when a lease may be taken, how many an instance should hold, which to give
up, and when a holder must stop (DESIGN.md "Ownership across instances").

Clocks of different hosts disagree, so nobody compares a rival's `expiresAtMs` with its
own wall clock. A candidate judges a rival's lease the way Kubernetes does: only after it
has seen the same record unchanged for a whole lease on its *own* monotonic clock. A
holder measures its own deadline from the moment it *sent* its last successful renewal,
and stops the socket at 2/3 of a lease: before any candidate, which waits a whole lease
after it last saw a change, can take over.

Pure: times (monotonic seconds of the caller) and records are passed in.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Optional

from wasync.runtime.store.base import Lease

STOP_AT = 2 / 3  # of a lease after the last renewal was sent: the holder stops its socket
# Takeovers in one round stop after this share of a lease (the rest wait for the next
# round, which renews first): a long run of acquisitions must not hold back renewals.
ACQUIRE_BUDGET = 1 / 6
STALE_INSTANCE_LEASES = 5  # an instance doc unchanged this many leases is a dead instance's
# While joining (its first lease), an instance has a round every JOINING_ROUND_LEASES of a
# lease as well: instances started together first see only themselves, the first one up
# takes every free lease and sheds most of them a moment later; the others picked those up
# only at their next round, lease/3 later (bench/pipeline.py --only instances: 4 instances
# were no faster than 2).
JOINING_ROUND_LEASES = 1 / 15


@dataclass(frozen=True)
class Sighting:
    """A record as last seen, and since when it has looked exactly like that."""

    key: Hashable
    since_s: float


def sighted(previous: Optional[Sighting], key: Hashable, now_s: float) -> Sighting:
    """The sighting after reading the record again at `now_s`."""
    return previous if previous is not None and previous.key == key else Sighting(key, now_s)


def lease_key(lease: Lease) -> tuple:
    return lease.holder, lease.epoch, lease.expires_at_ms, lease.renewed_at_ms


@dataclass(frozen=True)
class GivenUp:
    """A lease this process stopped using without releasing it (its renewal deadline passed,
    or the store showed it taken or fenced): under which holder and epoch, and when (this
    process's wall clock, milliseconds)."""

    holder: str
    epoch: int
    at_ms: int

    def shown_by(self, lease: Lease) -> bool:
        """The store still shows the lease as this process left it: its holder and epoch,
        renewed no later than when it was given up. A renewal sent before the deadline may
        land after it (the store hung, then answered); a renewal stamped later is another
        process's (two processes given one INSTANCE_ID)."""
        return (lease.holder, lease.epoch) == (self.holder, self.epoch) and lease.renewed_at_ms <= self.at_ms


def takeable_at(lease: Optional[Lease], sighting: Optional[Sighting], lease_s: float,
                given_up: Optional[GivenUp] = None) -> Optional[float]:
    """From when (the caller's monotonic seconds) the lease may be taken: at once when no
    lease was ever written or it was released; a whole lease after the current record was
    first seen otherwise. None: not seen yet (read it first).

    A lease this process gave up itself is taken back at once while the store still shows
    it so (`GivenUp.shown_by`): nobody else can hold that epoch, and its socket is stopped.
    Waiting a whole lease on it, as on a rival's, kept every account of a store outage deaf
    for another lease after the store came back (the renewal in flight landed late)."""
    if lease is None or lease.released:
        return float("-inf")
    if given_up is not None and given_up.shown_by(lease):
        return float("-inf")
    if sighting is None or sighting.key != lease_key(lease):
        return None
    return sighting.since_s + lease_s


def acquire_reason(lease: Optional[Lease], given_up: Optional[GivenUp] = None) -> str:
    """For metrics and logs: what kind of lease was taken."""
    if lease is None:
        return "free"
    if lease.released:
        return "released"
    return "regained" if given_up is not None and given_up.shown_by(lease) else "expired"


def live(sightings: Mapping[str, Sighting], now_s: float, lease_s: float) -> set[str]:
    """Instances whose heartbeat record changed within the last lease (or that were first
    seen less than a lease ago: until proven otherwise, an instance counts as live)."""
    return {name for name, s in sightings.items() if now_s - s.since_s < lease_s}


def stale(sightings: Mapping[str, Sighting], now_s: float, lease_s: float) -> set[str]:
    """Instances whose heartbeat has not moved for STALE_INSTANCE_LEASES leases: gone."""
    return {name for name, s in sightings.items() if now_s - s.since_s >= STALE_INSTANCE_LEASES * lease_s}


def fair_share(accounts: int, live_instances: int) -> int:
    return math.ceil(accounts / max(1, live_instances))


def capacity(accounts: int, live_instances: int, newcomers: int) -> int:
    """How many leases this instance should hold: its fair share, plus one while other
    instances are still starting (first seen less than a lease ago), so that instances
    whose counts briefly disagree never leave an account without an owner, and nobody
    sheds an account a newcomer is not ready to take yet."""
    return fair_share(accounts, live_instances) + (1 if newcomers else 0)


def to_shed(held_since: Mapping[str, float], limit: int) -> list[str]:
    """Which leases to give up to come down to `limit`: the most recently taken first, so
    accounts that have been stable here longest stay put."""
    excess = len(held_since) - limit
    if excess <= 0:
        return []
    return sorted(held_since, key=lambda a: (-held_since[a], a))[:excess]


def acquisition_order(accounts: Iterable[str], instance_id: str, own_first: Iterable[str] = ()) -> list[str]:
    """A stable order of its own for every instance, so that instances starting together
    try different free accounts first instead of all racing for the same ones. `own_first`
    (the leases it gave up itself, GivenUp) come before the rest: after a store
    outage every rival lease looks expired too, and an instance that took others' first
    filled its share with them, left its own to wait a whole lease for someone else, and
    the shares were evened out by handovers afterwards."""
    own = set(own_first)
    return sorted(accounts, key=lambda a: (a not in own,
                                           hashlib.blake2b(f"{instance_id}/{a}".encode(), digest_size=8).digest()))


def stop_deadline(renewal_sent_s: float, lease_s: float) -> float:
    """When a holder whose last successful renewal was sent at `renewal_sent_s` must have
    stopped the account's socket, unless a later renewal succeeded."""
    return renewal_sent_s + STOP_AT * lease_s
