"""LeaseCoordinatorActor: the only component that decides which accounts this instance
runs (DESIGN.md "Ownership across instances"). It tells the supervisor `Owned(record,
fence)` and `Lost(account, reason)`; the fence (holder, epoch) travels with every write
that must not come from a former owner.

Every lease/3 it has a round with the store, through its helper (actors/lease_io.py):
renewal of every lease it holds (one batch), the takeovers it decided, releases, a
heartbeat in `instances/`, and a read of accounts, leases and instances. It never calls the
store itself, so it keeps time while the store hangs: a lease whose renewal has not
succeeded within 2/3 of a lease from when it was sent is given up and its socket
stopped (on a ticker timer), before any other instance may take it.

What it takes and gives up follows the pure policy in actors/policy/leases.py:
- free or released leases at once; another instance's lease only after it saw the same
  record unchanged for a whole lease on its own clock (the holder is gone);
- up to its capacity: the fair share ceil(accounts / live instances), plus one while
  other instances are still starting; above it, the newest accounts are given up
  gracefully (socket stopped, rows handed over, then the lease released, so the
  instance that takes them over does so at once instead of after a lease);
- StreamReplaced is never fought: the lease is checked at once, and if it went to
  another instance the account is simply lost here.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional

import pykka

from wasync.actors import leases_protocol as lp
from wasync.actors.lease_io import LeaseIOActor
from wasync.actors.policy import leases as policy
from wasync.actors.supervisor_protocol import Lost, Owned
from wasync.runtime.account import AccountRecord
from wasync.runtime.board import Board, InstanceView, LeaseView
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.store.base import Fence, Lease
from wasync.runtime.ticker import Timer, Timers

log = logging.getLogger("wasync.leases")

# Why a lease is lost or given up: the metric label, and what the log and the supervisor say.
LOST = {
    "taken": "another instance holds it now",
    "deadline": "not renewed in time (the store did not answer)",
    "rebalancing": "given up for a fair share",
    "removed": "the account was removed or disabled",
    "fenced": "a write with its epoch was refused",
    "unwanted": "taken while draining, or for an account no longer listed",
}


@dataclass
class _Held:
    lease: Lease
    since_s: float  # when this instance took it
    deadline_s: float  # stop the socket by then unless a renewal succeeds
    giving_up: bool = False  # told Lost; released once the supervisor says the account stopped
    stopped: bool = False


@dataclass
class _Seen:
    """What the last read said about the rest of the world."""

    records: dict[str, AccountRecord] = field(default_factory=dict)  # enabled accounts
    leases: dict[str, Lease] = field(default_factory=dict)
    sightings: dict[str, policy.Sighting] = field(default_factory=dict)  # leases, by account
    instances: dict[str, dict] = field(default_factory=dict)
    instance_sightings: dict[str, policy.Sighting] = field(default_factory=dict)
    first_seen: dict[str, tuple[Optional[str], float]] = field(default_factory=dict)  # instance: (incarnation, since)
    read: bool = False  # at least one read succeeded


class LeaseCoordinatorActor(pykka.ThreadingActor):
    def __init__(self, store, supervisor: pykka.ActorRef, board: Board, metrics: Metrics, ticker: Timers,
                 clock: Clock, *, instance_id: str, lease_ms: int, version: str,
                 on_rejected_fence: Callable[[str], None] = lambda account_id: None):
        super().__init__()
        self.store, self.supervisor, self.board, self.metrics = store, supervisor, board, metrics
        self.ticker, self.clock = ticker, clock
        self.instance_id, self.lease_s, self.version = instance_id, lease_ms / 1000, version
        self.incarnation = secrets.token_hex(4)
        self.started_at_ms = clock.wall_ms()
        self._started_s = clock.monotonic_s()
        self.held: dict[str, _Held] = {}
        # Leases given up here without releasing them: taken back at once, and before
        # others', while the store still shows them as this process left them.
        self.given_up: dict[str, policy.GivenUp] = {}
        self.seen = _Seen()
        self.draining = False
        self._left = False  # released everything and left the instances list (shutdown)
        self._in_flight = False
        self._wanted = False
        self._last_ok_s: Optional[float] = None
        self._failing: Optional[str] = None
        self._io: Optional[pykka.ActorRef] = None
        self._timers: dict[str, Optional[Timer]] = {"round": None, "takeover": None, "deadlines": None,
                                                     "joining": None}

    # --- life cycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        self._io = self._start_io()
        self._timers["round"] = self.ticker.every(self.actor_ref, lp.RoundDue(), self.lease_s / 3)
        self._timers["joining"] = self.ticker.every(self.actor_ref, lp.RoundDue(),
                                                    self.lease_s * policy.JOINING_ROUND_LEASES)
        log.info("[lease] instanceId=%s incarnation=%s lease=%.1fs: coordinating", self.instance_id,
                 self.incarnation, self.lease_s)
        self._round()

    def _start_io(self) -> pykka.ActorRef:
        return LeaseIOActor.start(self.store, self.actor_ref, self.clock, instance_id=self.instance_id,
                                  incarnation=self.incarnation, lease_ms=int(self.lease_s * 1000),
                                  started_at_ms=self.started_at_ms, version=self.version)

    def on_stop(self) -> None:
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        if self._io is not None:
            self._io.stop(block=False)

    def on_receive(self, message: lp.CoordinatorMsg):
        try:
            match message:
                case lp.RoundDue():
                    self._round()
                case lp.RoundDone():
                    self._round_done(message)
                case lp.DeadlinesDue():
                    self._deadlines()
                case lp.Refresh():
                    self._round()
                case lp.AccountStopped(account_id=account_id):
                    self._stopped(account_id)
                case lp.SessionReplaced(account_id=account_id):
                    log.warning("[lease] accountId=%s StreamReplaced: checking the lease", account_id)
                    self._round()  # the renewal says whether it is still ours
                case lp.FenceRejected(account_id=account_id, epoch=epoch):
                    h = self.held.get(account_id)
                    if h is not None and h.lease.epoch == epoch:
                        self._lose(account_id, "fenced", release=False)
                case lp.Draining():
                    self.draining = True
                    self._publish()
                case lp.ReleaseAll():
                    self._release_all(message)
        except Exception:
            # The coordinator must outlive any surprise: a dead one would stop renewing.
            log.exception("[lease] unexpected error handling %s", type(message).__name__)
            self.metrics.actor_failures.labels(actor="leases").inc()

    # --- rounds ---------------------------------------------------------------------------

    def _round(self) -> None:
        if self._left:
            return
        joining = self._timers["joining"]
        if joining is not None and self.clock.monotonic_s() - self._started_s >= self.lease_s:
            joining.cancel()  # joined: rounds every lease/3 from now on
            self._timers["joining"] = None
        if not self._io.is_alive():
            # It never should die (it catches what the store raises); if it did, a round in
            # flight never comes back: start a new helper rather than never renew again.
            log.error("[lease] the store helper died: starting a new one")
            self.metrics.actor_failures.labels(actor="lease_io").inc()
            self._io, self._in_flight = self._start_io(), False
        if self._in_flight:
            self._wanted = True  # right after the one in flight
            return
        now = self.clock.monotonic_s()
        held = [h.lease for h in self.held.values()]
        release = [h.lease for h in self.held.values() if h.stopped]
        acquire = [] if self.draining else self._takeovers(now)
        gone = policy.stale(self.seen.instance_sightings, now, self.lease_s) - {self.instance_id}
        self._in_flight, self._wanted = True, False
        self._io.tell(lp.Round(now, renew=tuple(held), release=tuple(release), acquire=tuple(acquire),
                               acquire_until_s=now + policy.ACQUIRE_BUDGET * self.lease_s, held=len(self.held),
                               remove_instances=tuple(sorted(gone))))

    def _round_done(self, done: lp.RoundDone) -> None:
        self._in_flight = False
        if done.error:
            if self._failing is None:
                log.warning("[lease] round with the store failed (%s): leases are given up when not renewed "
                            "within %.1f s", done.error, policy.STOP_AT * self.lease_s)
            self._failing = done.error
        else:
            if self._failing is not None:
                log.info("[lease] the store answers again")
            self._failing, self._last_ok_s = None, done.read_s
        self._renewed(done)
        for account_id in done.released:
            self.held.pop(account_id, None)
            log.info("[lease] accountId=%s released", account_id)
        for lease, before, sent_s in done.acquired:
            self._took(lease, before, sent_s)
        if done.leases is not None:
            self._read(done)
            self._rebalance(done.read_s)
            self._schedule_takeover(done.read_s)
        self._arm_deadlines()
        self._publish()
        if self._wanted or self._takeovers_due():
            self._round()

    def _renewed(self, done: lp.RoundDone) -> None:
        if done.renewed is None:
            return  # unknown: the deadlines decide
        renewed = {lease.account_id: lease for lease in done.renewed}
        for sent in done.renew_sent:
            h = self.held.get(sent.account_id)
            if h is None or h.lease.epoch != sent.epoch:
                continue
            lease = renewed.get(sent.account_id)
            if lease is None:
                self._lose(sent.account_id, "taken", release=False)
            else:
                h.lease, h.deadline_s = lease, policy.stop_deadline(done.renew_sent_s, self.lease_s)

    def _took(self, lease: Lease, before: Optional[Lease], sent_s: float) -> None:
        account_id = lease.account_id
        now, deadline = self.clock.monotonic_s(), policy.stop_deadline(sent_s, self.lease_s)
        self.held[account_id] = _Held(lease, now, deadline)
        if deadline <= now:
            # The store answered too late (a round that hung): by our own rule the lease may
            # not be used any more. Hand it back at once rather than start and stop a socket.
            h = self.held[account_id]
            h.giving_up = h.stopped = True
            log.warning("[lease] accountId=%s acquired epoch=%d too late to use (the store took %.1f s): releasing",
                        account_id, lease.epoch, now - sent_s)
            self._wanted = True
            return
        given_up = self.given_up.pop(account_id, None)
        reason = policy.acquire_reason(before, given_up)
        self.metrics.lease_acquired.labels(reason=reason).inc()
        log.info("[lease] accountId=%s acquired epoch=%d (%s%s)", account_id, lease.epoch, reason,
                 f", was {before.holder}@{before.epoch}" if before else "")
        record = self.seen.records.get(account_id)
        if record is None or self.draining:
            self._lose(account_id, "unwanted", release=True)
            return
        self.supervisor.tell(Owned(record, Fence(self.instance_id, lease.epoch)))

    def _read(self, done: lp.RoundDone) -> None:
        seen, now = self.seen, done.read_s
        seen.read = True
        seen.records = {r.account_id: r for r in done.records if r.enabled}
        seen.leases = {lease.account_id: lease for lease in done.leases}
        seen.sightings = {a: policy.sighted(seen.sightings.get(a), policy.lease_key(lease), now)
                          for a, lease in seen.leases.items()}
        seen.instances = {doc["instanceId"]: doc for doc in done.instances}
        seen.instance_sightings = {
            name: policy.sighted(seen.instance_sightings.get(name), (doc.get("heartbeatAtMs"), doc.get("incarnation")),
                                 now) for name, doc in seen.instances.items()}
        for name, doc in seen.instances.items():
            incarnation = doc.get("incarnation")
            known = seen.first_seen.get(name)
            if known is None or known[0] != incarnation:
                seen.first_seen[name] = (incarnation, now)  # new, or started again under the same id
        mine = seen.instances.get(self.instance_id)
        if mine is not None and mine.get("incarnation") != self.incarnation:
            log.error("[lease] another process heartbeats as INSTANCE_ID=%s (incarnation %s, ours %s): give every "
                      "process its own INSTANCE_ID", self.instance_id, mine.get("incarnation"), self.incarnation)
        for account_id, given_up in list(self.given_up.items()):
            lease = seen.leases.get(account_id)
            if account_id not in seen.records or lease is None or not given_up.shown_by(lease):
                del self.given_up[account_id]  # taken, released, removed or disabled: nothing to take back
        for account_id, h in list(self.held.items()):
            if account_id not in seen.records and not h.giving_up:
                self._lose(account_id, "removed", release=True)

    # --- how many, which ---------------------------------------------------------------

    def _capacity(self, now: float) -> int:
        live = policy.live(self.seen.instance_sightings, now, self.lease_s) | {self.instance_id}
        newcomers = {i for i in live if i != self.instance_id
                     and now - self.seen.first_seen.get(i, (None, now))[1] < self.lease_s}
        return policy.capacity(len(self.seen.records), len(live), len(newcomers))

    def _rebalance(self, now: float) -> None:
        if self.draining:
            return
        keeping = {a: h.since_s for a, h in self.held.items() if not h.giving_up}
        for account_id in policy.to_shed(keeping, self._capacity(now)):
            self._lose(account_id, "rebalancing", release=True)

    def _takeovers(self, now: float) -> list[tuple[str, Optional[Lease]]]:
        """(account, the record as read) for every lease this instance may and should take now."""
        if not self.seen.read:
            return []
        room = self._capacity(now) - sum(1 for h in self.held.values() if not h.giving_up)
        if room <= 0:
            return []
        ready = [a for a in self.seen.records if a not in self.held and self._takeable_at(a) <= now]
        order = policy.acquisition_order(ready, self.instance_id, own_first=self.given_up)
        return [(a, self.seen.leases.get(a)) for a in order[:room]]

    def _takeable_at(self, account_id: str) -> float:
        lease = self.seen.leases.get(account_id)
        at = policy.takeable_at(lease, self.seen.sightings.get(account_id), self.lease_s,
                                self.given_up.get(account_id))
        return float("inf") if at is None else at

    def _takeovers_due(self) -> bool:
        return not self.draining and bool(self._takeovers(self.clock.monotonic_s()))

    def _schedule_takeover(self, now: float) -> None:
        """A round exactly when the next rival lease becomes takeable (not a tick later)."""
        waiting = [t for a in self.seen.records if a not in self.held
                   for t in (self._takeable_at(a),) if now < t < float("inf")]
        self._cancel("takeover")
        if waiting:
            self._timers["takeover"] = self.ticker.later(self.actor_ref, lp.RoundDue(), min(waiting) - now)

    # --- giving up -------------------------------------------------------------------------

    def _lose(self, account_id: str, reason: str, release: bool) -> None:
        """Tell the supervisor to stop the account (`reason`: a key of LOST). A lease given up
        gracefully (`release`) stays ours, renewed, until the account has stopped; then it is
        released."""
        h = self.held.get(account_id)
        if h is None:
            return
        if release:
            if h.giving_up:
                return
            h.giving_up = True
        else:
            del self.held[account_id]
            self.given_up[account_id] = policy.GivenUp(h.lease.holder, h.lease.epoch, self.clock.wall_ms())
        self.metrics.lease_lost.labels(reason=reason).inc()
        log.warning("[lease] accountId=%s lost epoch=%d: %s", account_id, h.lease.epoch, LOST[reason])
        self.supervisor.tell(Lost(account_id, LOST[reason], graceful=release))

    def _stopped(self, account_id: str) -> None:
        h = self.held.get(account_id)
        if h is not None and h.giving_up and not h.stopped:
            h.stopped = True
            self._round()  # release it now: the next owner need not wait

    def _deadlines(self) -> None:
        now = self.clock.monotonic_s()
        for account_id, h in list(self.held.items()):
            if h.deadline_s <= now and not h.stopped:  # (a stopped one only waits to be released)
                self._lose(account_id, "deadline", release=False)
        self._arm_deadlines()
        self._publish()

    def _arm_deadlines(self) -> None:
        self._cancel("deadlines")
        # A stopped one has no socket left to stop: it only waits to be released (were it
        # counted, a past deadline would re-arm this timer at once, forever).
        pending = [h.deadline_s for h in self.held.values() if not h.stopped]
        if pending:
            delay = min(pending) - self.clock.monotonic_s()
            self._timers["deadlines"] = self.ticker.later(self.actor_ref, lp.DeadlinesDue(), max(0.0, delay))

    def _release_all(self, message: lp.ReleaseAll) -> None:
        """Shutdown: the sockets are stopped; hand the leases back so others take them now,
        and have no more rounds (a heartbeat would bring our instance document back)."""
        self.draining, self._left = True, True
        for name in ("round", "takeover", "deadlines"):
            self._cancel(name)
        leases = () if message.keep_all else tuple(h.lease for a, h in self.held.items() if a not in message.keep)
        log.info("[lease] releasing %d leases (keeping %s) and leaving", len(leases),
                 "all" if message.keep_all else len(self.held) - len(leases))
        self._io.tell(lp.Round(self.clock.monotonic_s(), release=leases, leave=True, reply=message.reply))
        self.held.clear()
        self._publish()

    def _cancel(self, name: str) -> None:
        timer = self._timers.get(name)
        if timer is not None:
            timer.cancel()
        self._timers[name] = None

    # --- what others see ------------------------------------------------------------------

    def _publish(self) -> None:
        now = self.clock.monotonic_s()
        # Active: it can take and keep leases (its last round with the store went through).
        active = not self.draining and self._last_ok_s is not None and self._failing is None
        held_by: dict[str, int] = {}
        holders = {}
        for account_id, lease in self.seen.leases.items():
            if not lease.released:
                holders[account_id] = (lease.holder, lease.epoch)
                held_by[lease.holder] = held_by.get(lease.holder, 0) + 1
        for account_id, h in self.held.items():
            holders[account_id] = (self.instance_id, h.lease.epoch)
        live = policy.live(self.seen.instance_sightings, now, self.lease_s)
        instances = tuple(InstanceView(
            name, live=name in live or name == self.instance_id, held=len(self.held) if name == self.instance_id
            else held_by.get(name, 0), unchanged_for_ms=int((now - s.since_s) * 1000),
            started_at=doc.get("startedAt"), version=doc.get("version"))
            for name, doc in sorted(self.seen.instances.items())
            for s in (self.seen.instance_sightings.get(name, policy.Sighting(None, now)),))
        self.board.publish_leases(LeaseView(
            mode="active" if active else "passive", held=len(self.held), holders=holders, instances=instances,
            owned=frozenset(a for a, h in self.held.items() if not h.giving_up) if self.seen.read else None))
        self.metrics.leases_held.set(len(self.held))
        self.metrics.live_instances.set(len(live | {self.instance_id}))
