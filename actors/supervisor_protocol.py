"""What the SupervisorActor is told, and by whom (DESIGN.md "Supervision").

pykka has no links or monitors, so the supervisor builds them out of these: its children
report failures, stops and what they observed; the lease coordinator says which accounts
to run; the ticker drives liveness rounds and scheduled starts. Every report from a
child names the child's `generation`: news from a replaced actor is told apart and
ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from wasync.actors.reply import Reply
from wasync.runtime.account import AccountFacts, AccountRecord
from wasync.runtime.store.base import Fence

# --- from the lease coordinator -----------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """Run this account here (as stored when ownership began), under this lease: writes
    that must not come from a former owner carry the fence."""

    record: AccountRecord
    fence: Fence


@dataclass(frozen=True)
class Lost:
    """Stop running this account here. `graceful`: the lease is still ours until the
    account has stopped (given up, removed), so its last status may still be written;
    otherwise another instance may already run it, and nothing fenced is written."""

    account_id: str
    reason: str
    graceful: bool = False


# --- from the ticker ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Liveness round: probe every child, replace the hung, judge the rest."""


@dataclass(frozen=True)
class StartDue:
    """A scheduled start (after a backoff, a ban, a start-gate slot) is due."""

    account_id: str
    token: int  # stale when the account was rescheduled since
    step: Literal["gate", "start"]  # "gate": take a start-gate slot first; "start": start now


# --- from account actors -------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the child observed: the answer to Probe `probe_seq`, or (None) news that may
    change the account's status (connected, pairing, disconnected)."""

    facts: AccountFacts
    probe_seq: Optional[int] = None


@dataclass(frozen=True)
class ChildFailed:
    account_id: str
    generation: int
    error: str


@dataclass(frozen=True)
class SessionStopped:
    """The child stopped its session as asked (StopSession) and handed its rows over."""

    account_id: str
    generation: int


@dataclass(frozen=True)
class ChildStopped:
    """The child has stopped for good (its session too): the account may start again."""

    account_id: str
    generation: int


@dataclass(frozen=True)
class SessionLoggedOut:
    account_id: str
    generation: int
    reason: str


@dataclass(frozen=True)
class SessionReplaced:
    """StreamReplaced: another client holds this session. Never fought."""

    account_id: str
    generation: int


@dataclass(frozen=True)
class SessionBanned:
    account_id: str
    generation: int
    reason: str
    retry_after_ms: int


@dataclass(frozen=True)
class SessionPaired:
    account_id: str
    generation: int
    jid: str
    phone: str


# --- from the writer ---------------------------------------------------------------------


@dataclass(frozen=True)
class WriteRejected:
    """The store refused this account's writes for good; its rows were quarantined."""

    account_id: str
    reason: str
    rows: int
    stale_fence: Optional[Fence] = None  # the fence the store refused (another instance holds the lease)


# --- from the control facade and the daemon --------------------------------------------------


@dataclass(frozen=True)
class RestartAccount:
    """An operator's restart (regenerate-qr): a fresh start with a fresh restart budget; a
    new pairing for an account that needs repair, or when `new_pairing` asks for one."""

    account_id: str
    new_pairing: bool = False


@dataclass(frozen=True)
class RequestPairingCode:
    """Forwarded to the account's actor; `reply` gets the code, or NotConnected when no
    actor runs the account here."""

    account_id: str
    phone: str
    reply: Reply


@dataclass(frozen=True)
class InjectFault:
    """Test-only (WASYNC_DEBUG_FAULTS); `reply` is set once forwarded (or NotConnected)."""

    account_id: str
    kind: Literal["raise", "block"]
    reply: Reply


@dataclass(frozen=True)
class BlockSupervisor:
    """Test-only (WASYNC_DEBUG_FAULTS): the supervisor sets `reply`, then blocks in this
    handler for good, a stand-in for a supervisor stuck in a call (tests of the systemd
    watchdog, which stops pinging when the supervisor no longer answers)."""

    reply: Reply


@dataclass(frozen=True)
class ToAccount:
    """Orders for an account's actor from outside the supervision tree (the scheduler's
    history walks, the API's "send now"): the supervisor owns the actors and hands them
    on; `on_absent` goes back to the scheduler when no actor runs the account here."""

    account_id: str
    message: object  # an account_protocol message (RunWalk, CancelWalk, SendWaiting)
    on_absent: object = None  # a scheduler_protocol message


@dataclass(frozen=True)
class StopSessions:
    """Shutdown, step one: no more starts; every child stops its session (and every child
    already stopping finishes). `reply` is set once all of them have."""

    reply: Reply


@dataclass(frozen=True)
class OpenSessions:
    """Ask, after StopSessions: the accounts whose sessions have not stopped yet (a
    frozenset of ids). Their leases must not be released: another instance taking one
    would connect while this socket is still open."""


@dataclass(frozen=True)
class RunningAccounts:
    """Ask: the accounts with a running actor, sorted (a tuple of ids)."""


SupervisorMsg = Union[Owned, Lost, Tick, StartDue, Facts, ChildFailed, SessionStopped, ChildStopped,
                      SessionLoggedOut, SessionReplaced, SessionBanned, SessionPaired, WriteRejected,
                      RestartAccount, RequestPairingCode, InjectFault, BlockSupervisor, ToAccount, StopSessions,
                      OpenSessions, RunningAccounts]
