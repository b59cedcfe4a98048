"""An account as the daemon knows it: the rules for its id and phone, its stored record,
the typed changes to that record, what its actor observed and what the supervisor
decided.

One owner per fact (DESIGN.md): the account actor owns `AccountFacts`, the supervisor
owns `Supervision`; `AccountState` is the two put together for readers. A change to the
stored record travels as an `AccountPatch` built by the fact's owner; only the stores
know the document field names (runtime/store/schema.py).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
from typing import Any, Optional

from wasync.runtime.backfill import JobRun, Progress
from wasync.runtime.model import AccountStatus

# --- ids and phones ---------------------------------------------------------------------

# Account ids end up in document ids, and thread ids are "{accountId}__{jid}": a "__"
# inside an account id would make thread ids ambiguous.
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PHONE_DIGITS = re.compile(r"[0-9]{5,20}")  # ASCII only: str.isdigit() accepts other scripts
_PHONE_SEPARATORS = re.compile(r"[ \-]")


class BadAccount(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_account_id(value: Any) -> str:
    if not isinstance(value, str):
        raise BadAccount("invalid_account_id", "accountId must be a string")
    if not _ACCOUNT_ID.fullmatch(value):
        raise BadAccount("invalid_account_id", "accountId must be 1-64 characters of A-Z a-z 0-9 _ -")
    if "__" in value:
        raise BadAccount("invalid_account_id", "accountId must not contain '__' (thread ids use it)")
    return value


def check_phone(value: Any) -> str:
    """'+1 555-222-3333' -> '15552223333': a leading +, spaces and dashes are dropped."""
    if not isinstance(value, str):
        raise BadAccount("invalid_phone", "phone must be a string of digits")
    digits = _PHONE_SEPARATORS.sub("", value.strip().removeprefix("+"))
    if not _PHONE_DIGITS.fullmatch(digits):
        raise BadAccount("invalid_phone", "phone must be 5-20 digits (an optional leading +, spaces and "
                                          "dashes are ignored)")
    return digits


# --- the stored record and changes to it ---------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """Whether an operator must re-pair the account; `reason` and `since_ms` while it must."""

    needed: bool
    reason: Optional[str] = None
    since_ms: Optional[int] = None


NO_REPAIR = Repair(needed=False)


@dataclass(frozen=True)
class HistorySyncResult:
    """`lastHistorySyncResult` (SPEC §2): what the last history chunk came to."""

    saved: int
    skipped: int
    errors: int
    total: int
    dry_run: bool


@dataclass(frozen=True)
class HistorySyncUpdate:
    """History chunks folded into one change. Each chunk adds one to `historySyncCount`
    once, however often its spool row is replayed: a chunk is known by the spool it was
    first written to and its seq there."""

    at_ms: int
    result: HistorySyncResult
    chunks: tuple[tuple[str, int], ...]  # (spool id, seq)

    def then(self, later: "HistorySyncUpdate") -> "HistorySyncUpdate":
        return HistorySyncUpdate(later.at_ms, later.result, tuple(sorted(set(self.chunks) | set(later.chunks))))


@dataclass(frozen=True)
class AccountPatch:
    """A change to an account's stored record; None leaves a field as it is.

    Who builds which field (one writer per fact): `status` and `repair` the supervisor;
    `phone`, `jid`, the realtime and history fields the account's ingest (the account
    actor, or the sweeper for rows of an account that no longer runs here)."""

    status: Optional[AccountStatus] = None
    repair: Optional[Repair] = None
    phone: Optional[str] = None
    jid: Optional[str] = None
    realtime_ingest_ms: Optional[int] = None  # lastRealtimeIngestAt: when we stored a live message
    realtime_message_ms: Optional[int] = None  # lastRealtimeMessageAt: that message's own time
    realtime_error: Optional[str] = None
    history: Optional[HistorySyncUpdate] = None
    # the scheduler's jobs (runtime/backfill.py): a run started or finished, and repairs
    backfill: Optional[JobRun] = None
    recent_sync: Optional[JobRun] = None
    auto_repair_ms: Optional[int] = None  # lastAutoRepairAt

    def then(self, later: "AccountPatch") -> "AccountPatch":
        """This change followed by `later`: later values win; history chunks add up."""
        merged = {name: value if (value := getattr(later, name)) is not None else getattr(self, name)
                  for name in _PATCH_FIELDS}
        if self.history is not None and later.history is not None:
            merged["history"] = self.history.then(later.history)
        return AccountPatch(**merged)

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in _PATCH_FIELDS)


_PATCH_FIELDS = tuple(f.name for f in fields(AccountPatch))  # fields() builds a tuple per call: once here


@dataclass(frozen=True)
class JobTimes:
    """The stored times the scheduler's eligibility rules read (SPEC §2), so cooldowns and
    backoffs hold across restarts and lease moves."""

    last_auto_backfill_ms: Optional[int] = None  # lastAutoBackfillAt: the last run's start
    last_auto_backfill_success_ms: Optional[int] = None  # lastAutoBackfillSuccessAt
    last_auto_backfill_attempt_ms: Optional[int] = None  # lastAutoBackfillAttemptAt
    last_auto_backfill_ok: Optional[bool] = None  # lastAutoBackfillStatus.ok (None: running/never)
    last_recent_sync_ms: Optional[int] = None  # lastRecentSyncAt
    last_auto_repair_ms: Optional[int] = None  # lastAutoRepairAt


@dataclass(frozen=True)
class AccountRecord:
    """An account as stored, as far as deciding to run it goes."""

    account_id: str
    enabled: bool = True
    phone: Optional[str] = None
    status: Optional[AccountStatus] = None
    repair: Repair = NO_REPAIR
    jobs: JobTimes = JobTimes()



# --- what is observed, what is decided, what readers see ---------------------------------


class Link(str, enum.Enum):
    """The session's connection as its transport reports it."""

    CONNECTING = "connecting"
    PAIRING = "pairing"  # showing QR codes, waiting for a phone
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class AccountFacts:
    """What an account's actor observed. It alone writes these; it never decides status
    (actors/policy/health.py judges them, for the supervisor)."""

    account_id: str
    generation: int = 0  # which actor of the account observed them (see Supervision)
    link: Link = Link.CONNECTING
    phone: Optional[str] = None
    jid: Optional[str] = None
    logged_out_reason: Optional[str] = None
    last_real_message_ms: Optional[int] = None
    last_protocol_message_ms: Optional[int] = None
    connected_since_ms: Optional[int] = None
    # the current run of protocol messages without a real one (policy/health.protocol_streak)
    protocol_streak_start_ms: Optional[int] = None
    protocol_streak_beats: int = 0
    keepalive_timeouts: int = 0  # in a row; reset by KeepAliveRestored or a new connection
    undecryptable_recent: int = 0  # in the last 10 minutes
    real_messages: int = 0
    protocol_messages: int = 0
    last_history_sync_ms: Optional[int] = None
    realtime_ingest_ms: Optional[int] = None
    realtime_message_ms: Optional[int] = None
    realtime_error: Optional[str] = None
    qr_code: Optional[str] = None  # the pairing code to show now
    session_failure: Optional[str] = None  # the transport's connection loop died
    on_demand: Optional[bool] = None  # the session can ask for older history (None: no session yet)
    walk: Optional[Progress] = None  # a backfill or recent-sync walking the threads now

    @property
    def connected(self) -> bool:
        return self.link is Link.CONNECTED

    def link_news(self, before: "AccountFacts") -> bool:
        """Whether the account's outbox must hear of the link since `before`: it went up or
        down, or it came up again (a reconnect whose Disconnected and Connected were drained
        in one page). The outbox stops sending when a send finds the socket gone and waits
        for word that it is back; without this word it would wait for good."""
        return self.connected != before.connected or (
            self.connected and self.connected_since_ms != before.connected_since_ms)


@dataclass(frozen=True)
class Supervision:
    """What the supervisor decided about an account. It alone writes these."""

    account_id: str
    status: AccountStatus
    generation: int = 0  # the account actor whose facts count (older actors' news is stale)
    running: bool = False  # an actor runs the account here now
    # an actor here reads its spool rows: one runs, is stopping, or will start (not held
    # for an operator); otherwise the sweeper writes them
    ingesting: bool = False
    is_degraded: bool = False
    warning: Optional[str] = None
    repair: Repair = NO_REPAIR
    restarts: int = 0


@dataclass(frozen=True)
class AccountState:
    """An account as readers see it (health endpoint, dashboard, metrics): the supervisor's
    decisions and, while its actor runs, that actor's facts."""

    account_id: str
    status: AccountStatus
    running: bool = False
    phone: Optional[str] = None
    jid: Optional[str] = None
    connected: bool = False
    is_degraded: bool = False
    warning: Optional[str] = None
    needs_repair: bool = False
    repair_reason: Optional[str] = None
    repair_requested_ms: Optional[int] = None
    restarts: int = 0
    lease_holder: Optional[str] = None  # the instance whose lease covers the account, and its epoch
    lease_epoch: Optional[int] = None
    last_real_message_ms: Optional[int] = None
    last_protocol_message_ms: Optional[int] = None
    connected_since_ms: Optional[int] = None
    real_messages: int = 0
    protocol_messages: int = 0
    last_history_sync_ms: Optional[int] = None
    keepalive_timeouts: int = 0
    undecryptable_recent: int = 0
    on_demand: Optional[bool] = None
    walk: Optional[Progress] = None

    @classmethod
    def of(cls, decided: Supervision, observed: Optional[AccountFacts]) -> "AccountState":
        """`observed` counts only if it comes from the actor the supervisor runs now."""
        f = observed if observed is not None and observed.generation == decided.generation else None
        return cls(
            account_id=decided.account_id, status=decided.status, running=decided.running,
            is_degraded=decided.is_degraded, warning=decided.warning, needs_repair=decided.repair.needed,
            repair_reason=decided.repair.reason, repair_requested_ms=decided.repair.since_ms,
            restarts=decided.restarts,
            **({} if f is None else dict(
                phone=f.phone, jid=f.jid, connected=decided.running and f.connected,
                last_real_message_ms=f.last_real_message_ms, last_protocol_message_ms=f.last_protocol_message_ms,
                connected_since_ms=f.connected_since_ms, real_messages=f.real_messages,
                protocol_messages=f.protocol_messages, last_history_sync_ms=f.last_history_sync_ms,
                keepalive_timeouts=f.keepalive_timeouts, undecryptable_recent=f.undecryptable_recent,
                on_demand=f.on_demand, walk=f.walk)))
