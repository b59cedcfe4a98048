"""What the LeaseCoordinatorActor and its store helper (LeaseIOActor) are told."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from wasync.actors.reply import Reply
from wasync.runtime.account import AccountRecord
from wasync.runtime.store.base import Lease

# --- to the coordinator -------------------------------------------------------------------


@dataclass(frozen=True)
class RoundDue:
    """Ticker: time for a round with the store (renewals every lease/3, or a takeover)."""


@dataclass(frozen=True)
class DeadlinesDue:
    """Ticker: a held lease may have gone unrenewed for 2/3 of a lease: stop its socket."""


@dataclass(frozen=True)
class Refresh:
    """An account was added, removed or changed, or the store answers again: have a round (and read) now."""


@dataclass(frozen=True)
class AccountStopped:
    """The supervisor: no actor of this instance runs the account any more (its socket is
    stopped and its rows handed over), so a lease being given up can be released."""

    account_id: str


@dataclass(frozen=True)
class SessionReplaced:
    """The supervisor: WhatsApp said another client holds the account's session. If the
    lease went to another instance, that is the handover; the coordinator checks."""

    account_id: str


@dataclass(frozen=True)
class FenceRejected:
    """The store refused a write fenced with this epoch: if it is the lease held now, it
    is gone (another instance took the account)."""

    account_id: str
    epoch: int


@dataclass(frozen=True)
class Draining:
    """Shutdown began: take no more leases; keep renewing those held until ReleaseAll."""


@dataclass(frozen=True)
class ReleaseAll:
    """Shutdown, after the sockets stopped: release every lease but those in `keep` (their
    sockets may still be open; all of them with `keep_all`, when nobody could say), so
    others take them at once, and leave the instances list. `reply` is set when done (or
    failed)."""

    reply: Reply
    keep: frozenset[str] = frozenset()
    keep_all: bool = False


@dataclass(frozen=True)
class RoundDone:
    """The store helper's answer to a Round."""

    sent_s: float  # monotonic: when the round began
    read_s: float  # monotonic: when the reads came back (sightings count from here)
    renew_sent: tuple[Lease, ...] = ()
    renew_sent_s: float = 0.0  # when the renewal call was sent: the renewed leases' deadlines count from here
    renewed: Optional[tuple[Lease, ...]] = None  # None: the renewal failed (store), not "all lost"
    acquired: tuple[tuple[Lease, Optional[Lease], float], ...] = ()  # (taken, as it was before, when sent)
    released: tuple[str, ...] = ()
    records: Optional[tuple[AccountRecord, ...]] = None  # None: not read this round
    leases: Optional[tuple[Lease, ...]] = None
    instances: Optional[tuple[dict, ...]] = None
    error: Optional[str] = None


CoordinatorMsg = Union[RoundDue, DeadlinesDue, Refresh, AccountStopped, SessionReplaced, FenceRejected, Draining,
                       ReleaseAll, RoundDone]


# --- to the store helper ---------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One round with the store, most urgent first: renew, acquire, release, heartbeat, read."""

    sent_s: float
    renew: tuple[Lease, ...] = ()
    release: tuple[Lease, ...] = ()
    acquire: tuple[tuple[str, Optional[Lease]], ...] = ()  # (account, the record it was read as)
    acquire_until_s: float = float("inf")  # monotonic: send no acquisition after this
    held: int = 0  # for the heartbeat
    remove_instances: tuple[str, ...] = ()  # dead instances' leftover heartbeat documents
    leave: bool = False  # shutdown: remove our own instance document, read nothing
    reply: Optional[Reply] = None  # set (True/False) when the round is over (shutdown)
