"""The Store port: domain verbs the daemon needs from its document store.

Two implementations (`sqlite.SqliteStore`, `firestore.FirestoreStore`) pass one contract
suite (tests/test_store_contract.py). Callers are actor threads: every method blocks.

Rules every implementation keeps (SPEC §2):
- A message's document id is its WhatsApp id, under its thread. Re-ingesting from any
  source never creates a second document and never erases a field already stored.
- Status only moves forward (queued < sent < delivered < read < played). A receipt, edit
  or revoke for a message not stored yet is kept and applied when the message arrives;
  it never creates a document by itself.
- A thread's lastMessageAt/Ms/Preview describe its newest stored message, whatever
  order messages arrive in.
- Leases: compare-and-set; the epoch goes up on every change of holder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from wasync.runtime.account import AccountPatch, AccountRecord
from wasync.runtime.backfill import RepairResult, ThreadHistory
from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate
from wasync.runtime.outbox import Claim, Decision, OutboxItem, OutboxStatus


class StoreError(RuntimeError):
    """The store could not do what was asked; the caller may retry (nothing was lost)."""


class Refused(StoreError):
    """The store will never accept this write as it is: retrying cannot help. The writer
    quarantines the account's rows with the reason instead of retrying for ever."""


class BadData(Refused):
    """The data itself is unacceptable (too large, a value the store cannot hold)."""


class StaleFence(Refused):
    """A fenced write carried an epoch that is no longer the account's current one."""


class NotFound(StoreError):
    pass


class PhoneInUse(Exception):
    """An account for this phone exists already: a second one would fight it for the
    session (WhatsApp keeps one socket per linked device: StreamReplaced, back and forth)."""

    def __init__(self, phone: str, holder: str):
        super().__init__(f"phone {phone} belongs to account {holder} already")
        self.phone, self.holder = phone, holder


@dataclass(frozen=True)
class Lease:
    """`leases/{accountId}`: who runs the account's socket, under which fencing epoch."""

    account_id: str
    holder: str
    epoch: int
    expires_at_ms: int  # 0: released (anyone may take it at once); otherwise informational
    renewed_at_ms: int
    # The store's revision of this record (Firestore: its update time), for writes that
    # must find it unchanged. Not part of the record's identity.
    version: Any = field(default=None, compare=False, repr=False)

    @property
    def released(self) -> bool:
        return self.expires_at_ms == 0

    def same_record(self, other: Optional["Lease"]) -> bool:
        """The same holder, epoch and times: nothing was written to it in between."""
        return other is not None and (self.holder, self.epoch, self.expires_at_ms, self.renewed_at_ms) == (
            other.holder, other.epoch, other.expires_at_ms, other.renewed_at_ms)


@dataclass(frozen=True)
class Fence:
    """Proof of ownership carried by non-idempotent writes."""

    holder: str
    epoch: int


@dataclass(frozen=True)
class WriteResult:
    messages: int = 0  # message documents written (created or merged)
    applied: int = 0  # receipts/edits/revokes applied to stored messages
    pending: int = 0  # kept until their message arrives
    threads: int = 0  # thread documents touched


@dataclass(frozen=True)
class Page:
    items: list[dict]
    next_cursor: Optional[str]


JOBS = ("backfill", "recent_sync")
PING_TIMEOUT_S = 2.0  # how long a store ping may take before it counts as "does not answer"


@dataclass(frozen=True)
class JobLock:
    job: str
    account_id: str
    owner: str
    expires_at_ms: int
    started_at_ms: int


class Store(Protocol):
    name: str
    # Whether writes may be held back until `flush()` (Firestore coalesces thread documents).
    # If not, the writer releases spool rows right after each write instead of with the next
    # flush, up to STORE_FLUSH_S later.
    holds_back: bool

    # --- conversation data (idempotent, unfenced) ---------------------------------
    def upsert_messages(self, messages: Sequence[Message], now_ms: int) -> WriteResult: ...
    def apply_receipts(self, receipts: Sequence[Receipt], now_ms: int) -> WriteResult: ...
    def apply_edits(self, edits: Sequence[MessageEdit], now_ms: int) -> WriteResult: ...
    def apply_revokes(self, revokes: Sequence[MessageRevoke], now_ms: int) -> WriteResult: ...
    def update_threads(self, updates: Sequence[ThreadUpdate], now_ms: int) -> WriteResult: ...
    def flush(self) -> None:
        """Write anything held back for coalescing (thread documents)."""

    # --- reads, in the JSON shape the API returns ----------------------------------
    def get_message(self, account_id: str, chat_jid: str, message_id: str) -> Optional[dict]: ...
    def list_threads(self, account_id: str, limit: int = 50, cursor: Optional[str] = None) -> Page: ...
    def list_messages(self, account_id: str, thread_id: str, limit: int = 50,
                      cursor: Optional[str] = None) -> Page: ...
    def get_thread(self, thread_id: str) -> Optional[dict]: ...

    # --- backfill: a thread's history is what is stored of it (runtime/backfill.py) ---
    def thread_history(self, account_id: str, chat_jid: str) -> Optional[ThreadHistory]:
        """The thread's oldest and newest stored messages (ordered by time, then id), how
        many are stored, and its backfill fields; None if neither the thread document
        nor any message exists."""
    def list_thread_histories(self, account_id: str, limit: int,
                              active_since_ms: Optional[int] = None) -> list[ThreadHistory]:
        """`thread_history` of the account's threads, latest lastMessageAtMs first (threads
        without one last, and left out when `active_since_ms` asks for lastMessageAtMs at
        or after it); at most `limit`."""
    def repair_threads(self, account_id: str, limit: int, now_ms: int) -> RepairResult:
        """Make up to `limit` of the account's thread documents (in list_thread_histories'
        order) describe their newest stored message again: lastMessageAt/Ms/Preview (and
        lastMessageId) rewritten where they differ. Threads without messages, other
        fields and absent documents are left alone."""

    # --- accounts --------------------------------------------------------------------
    def get_account(self, account_id: str) -> Optional[dict]: ...
    def list_accounts(self) -> list[dict]:
        """Every account document, in the JSON shape the API returns."""
    def list_account_records(self) -> list[AccountRecord]: ...
    def create_account(self, account_id: str, phone: Optional[str], now_ms: int) -> bool:
        """A new account (pairing, or resuming `phone`'s session); False if it exists.
        Raises PhoneInUse when another account has `phone` (checked in the same
        transaction as the create)."""
    def update_account(self, account_id: str, patch: AccountPatch, now_ms: int,
                       fence: Optional[Fence] = None) -> bool:
        """Apply `patch`; False (and nothing written) if the account does not exist: a
        late write for a removed account must not bring it back."""
    def delete_account(self, account_id: str) -> bool: ...

    # --- socket ownership ----------------------------------------------------------------
    def acquire_lease(self, account_id: str, holder: str, expected: Optional[Lease], now_ms: int,
                      ttl_ms: int) -> Optional[Lease]:
        """Take the lease if it is still exactly `expected` as the caller read it (None: no
        lease was ever written); the new holder gets epoch + 1. When that is allowed (free,
        released, or unchanged for a whole lease on the caller's own clock) the caller
        decides; the store only makes sure nothing was written in between."""
    def renew_leases(self, leases: Sequence[Lease], now_ms: int, ttl_ms: int) -> list[Lease]:
        """Extend the caller's leases (as last returned by acquire or renew); those taken or
        released meanwhile are left out of the answer. Cheap for hundreds at a time."""
    def release_lease(self, account_id: str, holder: str, epoch: int) -> bool: ...
    def get_lease(self, account_id: str) -> Optional[Lease]: ...
    def list_leases(self) -> list[Lease]: ...
    def heartbeat_instance(self, instance_id: str, incarnation: str, now_ms: int, started_at_ms: int,
                           version: str, accounts: int) -> None: ...
    def list_instances(self) -> list[dict]: ...
    def remove_instance(self, instance_id: str) -> None: ...

    # --- job locks (backfill, recent-sync) ---------------------------------------------
    def acquire_job_lock(self, job: str, account_id: str, owner: str, now_ms: int, ttl_ms: int,
                         fence: Optional[Fence] = None) -> Optional[JobLock]: ...
    def get_job_lock(self, job: str, account_id: str) -> Optional[JobLock]:
        """The lock as stored (it may have lapsed: compare expires_at_ms), or None."""
    def release_job_lock(self, job: str, account_id: str, owner: str) -> bool: ...

    # --- outbox (runtime/outbox.py holds the rules; stores apply them atomically) ----------
    def enqueue_outbox(self, item: OutboxItem, now_ms: int) -> tuple[OutboxItem, bool]:
        """Store a new item and its queued message document; (stored item, created). An
        item with this id already stored is returned as it is (a repeated clientMessageId)."""
    def claim_outbox(self, account_id: str, claim: Claim, now_ms: int, limit: int,
                     resend_safe: bool) -> list[OutboxItem]:
        """Fenced by the account's lease (StaleFence). Up to `limit` claimable items, oldest
        first, after `outbox.claim`: `sending` under `claim`, or `unknown` (orphans that
        cannot be resent safely; the message document says so too)."""
    def record_outbox_sent(self, item_id: str, wa_message_id: str, ts_ms: int, now_ms: int) -> OutboxItem:
        """WhatsApp accepted it: the item is `sent` and its message document is the one
        under `wa_message_id` (the queued document under another id is removed and its
        thread made to describe its newest message again). Idempotent; not fenced: a fact."""
    def settle_outbox(self, item_id: str, claim: Claim, outcome: OutboxItem, now_ms: int) -> OutboxItem:
        """Store `outcome` (outbox.retry or outbox.give_up of the item) if `claim` still
        holds it (StaleFence otherwise); a failed or unknown item's message says so."""
    def decide_outbox(self, item_id: str, decision: Decision, now_ms: int) -> OutboxItem:
        """An operator's word on an unknown or failed item (outbox.decide; OutboxConflict,
        NotFound)."""
    def get_outbox(self, item_id: str) -> Optional[OutboxItem]: ...
    def list_outbox(self, account_id: str, statuses: Sequence[OutboxStatus], limit: int) -> list[OutboxItem]:
        """The account's items in these states, oldest first."""
    def count_outbox(self) -> dict[str, dict[str, int]]:
        """account -> {status: n} for the items waiting for WhatsApp or an operator
        (queued, sending, unknown): what the dashboard shows."""

    # --- housekeeping ------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the store answers (a write could begin) within PING_TIMEOUT_S; never raises."""
    def close(self) -> None: ...


@dataclass
class DryRunCounts:
    messages: int = 0
    receipts: int = 0
    edits: int = 0
    revokes: int = 0
    threads: int = 0
    accounts: list = field(default_factory=list)


class DryRunStore:
    """Counts conversation writes and performs none; everything else passes through.
    (`WHATSAPP_HISTORY_SYNC_DRY_RUN`: count history, write nothing.)"""

    def __init__(self, inner: Store):
        self.inner = inner
        self.name = f"dry-run({inner.name})"
        self.counts = DryRunCounts()

    def upsert_messages(self, messages, now_ms):
        self.counts.messages += len(messages)
        return WriteResult(messages=len(messages))

    def apply_receipts(self, receipts, now_ms):
        self.counts.receipts += len(receipts)
        return WriteResult(applied=len(receipts))

    def apply_edits(self, edits, now_ms):
        self.counts.edits += len(edits)
        return WriteResult(applied=len(edits))

    def apply_revokes(self, revokes, now_ms):
        self.counts.revokes += len(revokes)
        return WriteResult(applied=len(revokes))

    def update_threads(self, updates, now_ms):
        self.counts.threads += len(updates)
        return WriteResult(threads=len(updates))

    def flush(self):
        pass

    def __getattr__(self, name):
        return getattr(self.inner, name)
