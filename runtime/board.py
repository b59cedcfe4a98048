"""The published state of a running daemon: actors write it, HTTP and metrics read it.
Reads never wait for an actor or the store (DESIGN: read-only endpoints read snapshots).

Each fact has one writer:
- account actors: their `AccountFacts` (only the generation the supervisor runs counts);
- the lease coordinator: which accounts this instance runs, who holds the others, the
  live instances, and whether this instance takes part (mode);
- the supervisor: its `Supervision` of each account, and which accounts it watches;
- the writer: how its last store write went; the store monitor: the last ping and the
  spool's depth; the system: readiness.
Readers get them put together (`AccountState.of`, `StoreHealth`), never reconciled.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Optional

from wasync.runtime.account import AccountFacts, AccountState, Supervision
from wasync.runtime.clock import Clock


@dataclass(frozen=True)
class StoreHealth:
    name: str  # "sqlite" | "firestore"
    connected: bool
    checked_at_ms: Optional[int] = None
    last_error: Optional[str] = None
    down_since_ms: Optional[int] = None


@dataclass(frozen=True)
class InstanceView:
    """An instance as the lease coordinator last saw it in `instances/`."""

    instance_id: str
    live: bool
    held: int  # leases it holds
    unchanged_for_ms: int  # since its heartbeat last changed, on this instance's clock
    started_at: Optional[str] = None
    version: Optional[str] = None


@dataclass(frozen=True)
class LeaseView:
    mode: str  # "active": renewing and taking leases; "passive": cannot (store unreachable, draining)
    held: int
    holders: dict  # account -> (holder instance, epoch), for every held lease seen
    instances: tuple[InstanceView, ...] = ()
    owned: Optional[frozenset[str]] = None  # accounts this instance runs; None until the first read


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state as last published."""

    instance_id: str
    ready: bool
    mode: str  # "active" | "passive"
    store: StoreHealth
    accounts: tuple[AccountState, ...] = ()
    spool_depth: int = 0
    spool_oldest_age_ms: Optional[int] = None
    taken_at_ms: int = 0
    # per account: {"accountId", "lastRealtimeIngestAt", "lastRealtimeMessageAt", "lastRealtimeError"}
    latest_realtime: tuple[dict, ...] = field(default=())
    leases: Optional[LeaseView] = None  # None until the lease coordinator has published


@dataclass(frozen=True)
class _Check:
    """One observer's latest word on the store."""

    ok: bool = True
    at_ms: Optional[int] = None
    error: Optional[str] = None
    failing_since_ms: Optional[int] = None

    def then(self, ok: bool, at_ms: int, error: Optional[str]) -> "_Check":
        since = None if ok else (self.failing_since_ms if not self.ok else at_ms)
        return _Check(ok, at_ms, None if ok else error, since)


class Board:
    def __init__(self, instance_id: str, store_name: str, clock: Clock):
        self.instance_id = instance_id
        self.store_name = store_name
        self.clock = clock
        self._lock = threading.Lock()
        self._decided: dict[str, Supervision] = {}
        self._observed: dict[str, AccountFacts] = {}
        self._writes = _Check()
        self._ping = _Check()
        self._ready = False
        self._spool: tuple[int, Optional[int]] = (0, None)
        self._leases: Optional[LeaseView] = None

    # --- writers ---------------------------------------------------------------------

    def publish_supervision(self, decided: Supervision) -> None:
        """The supervisor's decisions; a new generation drops the facts of the last actor."""
        with self._lock:
            self._decided[decided.account_id] = decided
            facts = self._observed.get(decided.account_id)
            if facts is not None and facts.generation != decided.generation:
                del self._observed[decided.account_id]

    def drop_account(self, account_id: str) -> None:
        """The supervisor no longer watches the account (removed, moved away)."""
        with self._lock:
            self._decided.pop(account_id, None)
            self._observed.pop(account_id, None)

    def publish_facts(self, facts: AccountFacts) -> None:
        """An account actor's facts; ignored unless it is the actor the supervisor runs."""
        with self._lock:
            decided = self._decided.get(facts.account_id)
            if decided is not None and decided.generation == facts.generation:
                self._observed[facts.account_id] = facts

    def publish_leases(self, view: LeaseView) -> None:
        with self._lock:
            self._leases = view

    def publish_writes(self, ok: bool, error: Optional[str] = None) -> None:
        now = self.clock.wall_ms()
        with self._lock:
            self._writes = self._writes.then(ok, now, error)

    def publish_ping(self, ok: bool, error: Optional[str] = None) -> None:
        now = self.clock.wall_ms()
        with self._lock:
            self._ping = self._ping.then(ok, now, error)

    def publish_spool(self, depth: int, oldest_received_ms: Optional[int]) -> None:
        with self._lock:
            self._spool = (depth, oldest_received_ms)

    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready

    # --- readers -----------------------------------------------------------------------

    def account(self, account_id: str) -> Optional[AccountState]:
        with self._lock:
            decided = self._decided.get(account_id)
            return None if decided is None else self._state(account_id, decided)

    def _state(self, account_id: str, decided: Supervision) -> AccountState:
        holder, epoch = (self._leases.holders.get(account_id) if self._leases else None) or (None, None)
        return replace(AccountState.of(decided, self._observed.get(account_id)), lease_holder=holder,
                       lease_epoch=epoch)

    def qr(self, account_id: str) -> Optional[str]:
        """The pairing code a phone should scan now (None when not pairing)."""
        with self._lock:
            decided, facts = self._decided.get(account_id), self._observed.get(account_id)
            return facts.qr_code if decided is not None and decided.running and facts is not None else None

    def ingesting(self, account_id: str) -> bool:
        """Whether an actor here reads the account's spool rows (now, or once it starts).
        Until the account list has been read, every account may yet be run here."""
        with self._lock:
            owned = self._leases.owned if self._leases is not None else None
            if owned is None:
                return True
            decided = self._decided.get(account_id)
            if decided is not None:
                return decided.ingesting
            return account_id in owned  # owned: the supervisor is about to start it

    def store_health(self) -> StoreHealth:
        with self._lock:
            return self._store_health()

    def _store_health(self) -> StoreHealth:
        checks = (self._writes, self._ping)
        failing = [c for c in checks if not c.ok]
        times = [c.at_ms for c in checks if c.at_ms is not None]
        return StoreHealth(self.store_name, not failing, checked_at_ms=max(times) if times else None,
                           last_error=failing[0].error if failing else None,
                           down_since_ms=min(c.failing_since_ms for c in failing) if failing else None)

    def snapshot(self) -> Snapshot:
        now = self.clock.wall_ms()
        with self._lock:
            depth, oldest = self._spool
            accounts = tuple(self._state(a, d) for a, d in sorted(self._decided.items()))
            realtime = tuple({"accountId": f.account_id, "lastRealtimeIngestAt": f.realtime_ingest_ms,
                              "lastRealtimeMessageAt": f.realtime_message_ms, "lastRealtimeError": f.realtime_error}
                             for f in self._observed.values()
                             if f.realtime_ingest_ms is not None or f.realtime_error is not None)
            return Snapshot(
                instance_id=self.instance_id, ready=self._ready,
                mode=self._leases.mode if self._leases else "passive", store=self._store_health(),
                accounts=accounts, spool_depth=depth,
                spool_oldest_age_ms=None if oldest is None else max(0, now - oldest), taken_at_ms=now,
                latest_realtime=tuple({k: v for k, v in r.items() if v is not None} for r in realtime),
                leases=self._leases)
