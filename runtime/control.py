"""What the HTTP surface (and the CLI) may ask of a running daemon.

Read-only calls return published snapshots and never block or fail because the store or
an actor is slow; admin calls may block (the HTTP layer runs them through
runtime/bridge.py in an executor, with a timeout).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from wasync.runtime.model import AccountState


@dataclass(frozen=True)
class StoreHealth:
    name: str  # "sqlite" | "firestore"
    connected: bool
    checked_at_ms: Optional[int] = None
    last_error: Optional[str] = None
    down_since_ms: Optional[int] = None


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state as last published (every account actor publishes on change)."""

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


class AccountExists(ValueError):
    pass


class UnknownAccount(KeyError):
    pass


class DaemonControl(Protocol):
    def snapshot(self) -> Snapshot:
        """Never blocks; never raises."""

    def list_accounts(self) -> list[dict]:
        """Account documents (store), merged with live state where the daemon has it."""

    def add_account(self, account_id: str, phone: Optional[str]) -> dict:
        """Register an account and start it (pairing if it has no session). Raises
        AccountExists. Returns the account document."""

    def remove_account(self, account_id: str) -> None:
        """Stop its session and forget the account. Raises UnknownAccount."""

    def current_qr(self, account_id: str) -> Optional[str]:
        """The pairing code to show now, None when the account is not pairing. Never
        blocks (snapshot). Raises UnknownAccount."""

    def pair_phone(self, account_id: str, phone: str) -> str:
        """An 8-character code to type on the phone (while pairing). Raises
        UnknownAccount, or a transport SessionError (e.g. NotConnected)."""

    def regenerate_qr(self, account_id: str) -> None:
        """Restart the account's session so pairing starts over with a fresh code."""

    def inject_fault(self, account_id: str, kind: str) -> None:
        """Test-only fault injection ("raise" | "block") into the account's actor; the HTTP
        route exists only with WASYNC_DEBUG_FAULTS. Raises UnknownAccount, NotConnected."""
