"""Backfill, recent-sync and thread repair: the values they pass around (pure, no I/O).

A thread's backfill state is not kept in a table of its own: the store is its truth.
Its cursors are the oldest and newest stored messages of the thread, so a run that dies
half-way resumes where the data ends (nothing to keep consistent with the data), and
the state moves with the lease because it lives in the shared store. What the store
cannot derive is kept on the thread document: whether WhatsApp said nothing older
exists (`historyComplete`, from `endOfHistoryTransferType`), and the last run's time
and result for the thread (`lastBackfillAt`, `lastBackfillResult`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class Job(str, enum.Enum):
    """The jobs the scheduler runs, each under its own job lock (store/base.JOBS)."""

    BACKFILL = "backfill"
    RECENT_SYNC = "recent_sync"


class Trigger(str, enum.Enum):
    CONNECT = "connect"  # 10-40 s after a session connected
    PERIODIC = "periodic"  # the auto-backfill / recent-sync tick
    MANUAL = "manual"  # an operator asked (HTTP, `wasync backfill`)


class Direction(str, enum.Enum):
    """Which way an on-demand history request reads from its anchor."""

    BEFORE = "before"  # older than the anchor: what WhatsApp's peer request does
    AFTER = "after"  # newer than the anchor (a trailing gap); not every transport can


@dataclass(frozen=True)
class MessageRef:
    """A stored message as an on-demand request's anchor."""

    id: str
    ts_ms: int
    from_me: bool


@dataclass(frozen=True)
class ThreadHistory:
    """What the store holds of one thread's history: its backfill cursors and counts."""

    account_id: str
    chat_jid: str
    last_message_at_ms: Optional[int]  # the thread document's field (what the inbox sorts by)
    oldest: Optional[MessageRef]  # oldest stored message: where a walk back starts
    newest: Optional[MessageRef]  # newest stored message: where a trailing gap starts
    stored: int  # messages stored in the thread
    complete: bool  # WhatsApp said nothing older exists (endOfHistoryTransferType)
    last_backfill_at_ms: Optional[int] = None
    last_backfill_result: Optional[str] = None  # "ok" | "empty" | "timeout" | "error: ..." | "unavailable"


@dataclass(frozen=True)
class RepairResult:
    """One thread-repair pass over an account's threads (`repair_threads`)."""

    checked: int  # threads looked at
    fixed: int  # threads whose lastMessageAt/Ms/Preview were rewritten
    missing: tuple[str, ...] = ()  # thread ids that lacked those fields ([schema-guard])


@dataclass(frozen=True)
class JobOutcome:
    """How a finished run went: the figures SPEC §2 stores for backfill and recent-sync."""

    ok: bool
    threads: int = 0
    messages: int = 0
    errors: int = 0
    duration_ms: int = 0
    error_code: Optional[str] = None  # when not ok: a stable word (timeout, interrupted, ...)
    error_message: Optional[str] = None
    on_demand: bool = True  # False: the transport cannot ask for history ("onDemand: unavailable")
    # per thread: (chat_jid, messages fetched, result word) for lastBackfillResult.threadResults
    thread_results: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True)
class JobRun:
    """A run's news for the account document (AccountPatch.backfill / .recent_sync):
    started (`outcome` None: running) or finished."""

    job: Job
    trigger: Trigger
    started_ms: int
    holder: str  # the instance running it
    outcome: Optional[JobOutcome] = None
    finished_ms: Optional[int] = None


@dataclass(frozen=True)
class Progress:
    """What a running walk has done so far (published for the status endpoint and the CLI)."""

    run_id: str
    job: Job
    trigger: Trigger
    started_ms: int
    threads_total: int
    threads_done: int
    messages: int
