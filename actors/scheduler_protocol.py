"""What the SchedulerActor is told."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from wasync.actors.reply import Reply
from wasync.runtime.account import AccountRecord
from wasync.runtime.backfill import Job, JobOutcome, RepairResult


@dataclass(frozen=True)
class Watch:
    """Ticker (every 2 s): notice new connections, start what is due."""


@dataclass(frozen=True)
class AutoBackfillTick:
    """Ticker (WHATSAPP_BACKFILL_INTERVAL_SECONDS): time for the periodic auto-backfill."""


@dataclass(frozen=True)
class RecentSyncTick:
    """Ticker (RECENT_SYNC_INTERVAL_MS): time for the recent-sync gap filler."""


@dataclass(frozen=True)
class StartBackfill:
    """An operator asks for a backfill of one account now. `reply` gets `Started` once the
    job lock is held, or fails with `BackfillRunning` / `RunsElsewhere` / NotConnected."""

    account_id: str
    reply: Reply


@dataclass(frozen=True)
class Started:
    run_id: str
    account_id: str


class BackfillRunning(RuntimeError):
    """A backfill of the account is already running (here or on `holder`)."""

    def __init__(self, account_id: str, holder: Optional[str], run_id: Optional[str] = None):
        self.account_id, self.holder, self.run_id = account_id, holder, run_id
        super().__init__(f"a backfill of {account_id} is already running on {holder or 'another instance'}")


@dataclass(frozen=True)
class RecordsRead:
    """The stored accounts' job times, read off the scheduler's thread, for `purpose`."""

    purpose: Job
    records: tuple[AccountRecord, ...] = ()
    error: Optional[str] = None


@dataclass(frozen=True)
class LockAnswer:
    """The job lock for a run was taken (`held`), or is held by `holder`, or failed."""

    run_id: str
    held: bool
    holder: Optional[str] = None
    error: Optional[str] = None
    fenced: bool = False  # refused: this instance's epoch is stale (the account moved)


@dataclass(frozen=True)
class WalkFinished:
    """The account actor (or the supervisor, when no actor runs the account) says a walk ended."""

    account_id: str
    run_id: str
    outcome: JobOutcome


@dataclass(frozen=True)
class RunOverdue:
    """Ticker: a run's time is up (its job lock lapses soon)."""

    run_id: str
    final: bool = False  # the walk was cancelled a while ago and still did not report


@dataclass(frozen=True)
class RunClosed:
    """The run's result is stored, threads repaired, the lock released (off the thread)."""

    run_id: str
    repaired: Optional[RepairResult] = None
    error: Optional[str] = None


SchedulerMsg = Union[Watch, AutoBackfillTick, RecentSyncTick, StartBackfill, RecordsRead, LockAnswer,
                     WalkFinished, RunOverdue, RunClosed]
