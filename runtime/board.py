"""The published state of a running daemon: actors write it, HTTP and metrics read it.
Reads never wait for an actor or the store (DESIGN: read-only endpoints read snapshots)."""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Optional

from wasync.runtime.clock import Clock
from wasync.runtime.control import Snapshot, StoreHealth
from wasync.runtime.model import AccountState, AccountStatus


class Board:
    def __init__(self, instance_id: str, store_name: str, clock: Clock):
        self.instance_id = instance_id
        self.clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, AccountState] = {}
        self._realtime: dict[str, dict] = {}
        self._store = StoreHealth(name=store_name, connected=True)
        self._ready = False
        self._spool = (0, None)
        self._qr: dict[str, str] = {}
        self._supervision: dict[str, dict] = {}

    def publish_account(self, state: AccountState) -> None:
        with self._lock:
            self._accounts[state.account_id] = state

    def publish_supervision(self, account_id: str, overlay: dict) -> None:
        """The supervisor's view of an account (restarts, repair, and while no actor runs
        for it, status and warning): laid over the actor's own state in every read."""
        with self._lock:
            self._supervision[account_id] = dict(overlay)

    def _merged(self, account_id: str) -> Optional[AccountState]:
        state = self._accounts.get(account_id)
        overlay = self._supervision.get(account_id)
        if overlay is None:
            return state
        if state is None:
            state = AccountState(account_id=account_id, status=overlay.get("status") or AccountStatus.CONNECTING)
        return replace(state, **overlay)

    def drop_account(self, account_id: str) -> None:
        with self._lock:
            self._supervision.pop(account_id, None)
            self._accounts.pop(account_id, None)
            self._realtime.pop(account_id, None)
            self._qr.pop(account_id, None)

    def publish_realtime(self, account_id: str, **fields) -> None:
        with self._lock:
            entry = self._realtime.setdefault(account_id, {"accountId": account_id})
            entry.update({k: v for k, v in fields.items() if v is not None})

    def publish_qr(self, account_id: str, code: Optional[str]) -> None:
        """The pairing code a phone should scan now (None once paired)."""
        with self._lock:
            if code:
                self._qr[account_id] = code
            else:
                self._qr.pop(account_id, None)

    def qr(self, account_id: str) -> Optional[str]:
        with self._lock:
            return self._qr.get(account_id)

    def store_ok(self) -> None:
        now = self.clock.wall_ms()
        with self._lock:
            self._store = StoreHealth(self._store.name, True, checked_at_ms=now)

    def store_failed(self, error: str) -> None:
        now = self.clock.wall_ms()
        with self._lock:
            since = self._store.down_since_ms if not self._store.connected else now
            self._store = StoreHealth(self._store.name, False, checked_at_ms=now, last_error=error,
                                      down_since_ms=since)

    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready

    def set_spool(self, depth: int, oldest_received_ms: Optional[int]) -> None:
        with self._lock:
            self._spool = (depth, oldest_received_ms)

    def account(self, account_id: str) -> Optional[AccountState]:
        with self._lock:
            return self._merged(account_id)

    def snapshot(self) -> Snapshot:
        now = self.clock.wall_ms()
        with self._lock:
            depth, oldest = self._spool
            return Snapshot(
                instance_id=self.instance_id, ready=self._ready, mode="active", store=self._store,
                accounts=tuple(self._merged(a) for a in sorted(self._accounts.keys() | self._supervision.keys())),
                spool_depth=depth, spool_oldest_age_ms=None if oldest is None else max(0, now - oldest),
                taken_at_ms=now, latest_realtime=tuple(dict(v) for v in self._realtime.values()))
