"""Backfill policy: which accounts get an automatic backfill or recent-sync now, which
threads a run visits and how far, when a walk through a thread stops, and when threads
are repaired (SPEC §3 variables). Pure: times (wall ms) and stored state are passed in.

Eligibility mirrors the seeds' rules: after a success an account rests for the cooldown;
any attempt (failed, interrupted, or still running somewhere) holds the next one back for
the attempt backoff; the accounts waiting longest go first. On-demand history is asked
page by page from an anchor, as WhatsApp's peer request works: walking back from the
oldest stored message deepens history, a page from the newest stored message forward
(where the transport can) fills a trailing gap, and the newest N messages backwards
(recent-sync) fill a gap behind the newest message.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from wasync.runtime.account import JobTimes
from wasync.runtime.backfill import Direction, MessageRef, ThreadHistory

DAY_MS = 86_400_000
CONNECT_DELAY_S = (10.0, 40.0)  # a backfill after a connect waits this long (spread, not a storm)
ON_DEMAND_MAX = 50  # WhatsApp answers at most this many messages per request


@dataclass(frozen=True)
class AutoRules:
    """SPEC §3: WHATSAPP_BACKFILL_COOLDOWN_MINUTES, AUTO_BACKFILL_ATTEMPT_BACKOFF_MS,
    AUTO_BACKFILL_MAX_ACCOUNTS_PER_TICK, WHATSAPP_BACKFILL_CONCURRENCY."""

    cooldown_ms: int
    attempt_backoff_ms: int
    max_accounts_per_tick: int
    concurrency: int


def skip_reason(times: JobTimes, now_ms: int, rules: AutoRules) -> Optional[str]:
    """Why an automatic backfill of this account must wait (None: it may run now)."""
    success = times.last_auto_backfill_success_ms
    if times.last_auto_backfill_ok and success is not None and now_ms - success < rules.cooldown_ms:
        return "cooldown"
    attempt = times.last_auto_backfill_attempt_ms or times.last_auto_backfill_ms
    if attempt is not None and now_ms - attempt < rules.attempt_backoff_ms:
        return "backoff"
    return None


def pick_auto_backfills(candidates: Iterable[tuple[str, JobTimes]], now_ms: int, rules: AutoRules,
                        running: int) -> list[str]:
    """The accounts to start on this tick: eligible ones, oldest `lastAutoBackfillAt`
    first (never run first), at most the per-tick limit and the free concurrency slots."""
    slots = min(rules.max_accounts_per_tick, rules.concurrency - running)
    if slots <= 0:
        return []
    eligible = [(t.last_auto_backfill_ms is not None, t.last_auto_backfill_ms or 0, a)
                for a, t in candidates if skip_reason(t, now_ms, rules) is None]
    return [a for _, _, a in sorted(eligible)[:slots]]


def pick_recent_syncs(candidates: Iterable[tuple[str, JobTimes]], now_ms: int, interval_ms: int,
                      slots: int) -> list[str]:
    """Accounts whose last recent-sync is an interval old (or that never had one), the
    longest waiting first, at most `slots`. A tenth of the interval is forgiven so a run
    that finished a moment after its tick is not skipped for a whole interval."""
    if slots <= 0:
        return []
    due = [(t.last_recent_sync_ms is not None, t.last_recent_sync_ms or 0, a) for a, t in candidates
           if t.last_recent_sync_ms is None or now_ms - t.last_recent_sync_ms >= interval_ms * 9 // 10]
    return [a for _, _, a in sorted(due)[:slots]]


def later_times(known: Optional[JobTimes], stored: JobTimes) -> JobTimes:
    """The job times as read from the store, unless what ran here since is newer (a read
    may predate the write of a run that just ended)."""
    if known is None:
        return stored
    pick = {}
    for name in ("last_auto_backfill_ms", "last_auto_backfill_attempt_ms", "last_auto_backfill_success_ms",
                 "last_recent_sync_ms", "last_auto_repair_ms"):
        a, b = getattr(known, name), getattr(stored, name)
        pick[name] = b if a is None or (b is not None and b >= a) else a
    newer_attempt = (stored.last_auto_backfill_ms or 0) >= (known.last_auto_backfill_ms or 0)
    pick["last_auto_backfill_ok"] = stored.last_auto_backfill_ok if newer_attempt else known.last_auto_backfill_ok
    return JobTimes(**pick)


def connect_delay_s(rng: random.Random) -> float:
    """How long after a connect the account's backfill starts."""
    return rng.uniform(*CONNECT_DELAY_S)


def repair_due(times: JobTimes, now_ms: int, cooldown_ms: int) -> bool:
    last = times.last_auto_repair_ms
    return last is None or now_ms - last >= cooldown_ms


# --- which threads, how far ------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One direction of a walk through a thread: pages from `anchor` until `budget`
    messages came, the phone has no more, or WhatsApp says the history is complete."""

    direction: Direction
    anchor: MessageRef
    budget: int  # messages to fetch at most
    page: int  # messages per request (≤ ON_DEMAND_MAX)


@dataclass(frozen=True)
class ThreadTask:
    chat_jid: str
    legs: tuple[Leg, ...]
    skip: Optional[str] = None  # why nothing is asked for this thread (a result word)


@dataclass(frozen=True)
class BackfillRules:
    """SPEC §3: WHATSAPP_BACKFILL_THREADS, _COUNT, _MESSAGES_PER_THREAD, _MAX_DAYS."""

    threads: int
    count: int
    page: int
    max_days: Optional[int] = None


def by_recency(threads: Iterable[ThreadHistory]) -> list[ThreadHistory]:
    """Most recent first; threads without a last message time last (ties: by chat)."""
    return sorted(threads, key=lambda t: (t.last_message_at_ms is None, -(t.last_message_at_ms or 0), t.chat_jid))


def backfill_plan(threads: Sequence[ThreadHistory], now_ms: int, rules: BackfillRules,
                  can_after: bool) -> list[ThreadTask]:
    """A backfill run: the most recent `threads`; in each, a page forward from the newest
    stored message (a trailing gap: messages missed while nobody listened) where the
    transport can, then back from the oldest stored one up to `count` messages unless
    WhatsApp said the history is complete. Threads idle beyond `max_days` are skipped."""
    page = max(1, min(rules.page, ON_DEMAND_MAX))
    tasks = []
    for t in by_recency(threads)[:rules.threads]:
        if rules.max_days is not None and (t.last_message_at_ms is None
                                           or t.last_message_at_ms < now_ms - rules.max_days * DAY_MS):
            tasks.append(ThreadTask(t.chat_jid, (), skip="idle"))
            continue
        if t.oldest is None or t.newest is None:
            tasks.append(ThreadTask(t.chat_jid, (), skip="no_anchor"))  # nothing stored to ask from
            continue
        legs = []
        if can_after:
            legs.append(Leg(Direction.AFTER, t.newest, page, page))
        if not t.complete:
            legs.append(Leg(Direction.BEFORE, t.oldest, rules.count, page))
        tasks.append(ThreadTask(t.chat_jid, tuple(legs), skip=None if legs else "complete"))
    return tasks


@dataclass(frozen=True)
class RecentRules:
    """SPEC §3: RECENT_SYNC_LOOKBACK_MS, _MAX_THREADS, _MAX_MESSAGES_PER_THREAD."""

    lookback_ms: int
    threads: int
    messages: int


def recent_sync_plan(threads: Sequence[ThreadHistory], now_ms: int, rules: RecentRules,
                     can_after: bool) -> list[ThreadTask]:
    """A recent-sync: threads active within the lookback, most recent first; in each the
    last `messages` messages behind the newest stored one (a gap between it and older
    stored messages) and, where the transport can, a page after it (a trailing gap)."""
    page = max(1, min(rules.messages, ON_DEMAND_MAX))
    active = [t for t in by_recency(threads)
              if t.last_message_at_ms is not None and t.last_message_at_ms >= now_ms - rules.lookback_ms]
    tasks = []
    for t in active[:rules.threads]:
        if t.newest is None:
            tasks.append(ThreadTask(t.chat_jid, (), skip="no_anchor"))
            continue
        legs = [Leg(Direction.BEFORE, t.newest, rules.messages, page)]
        if can_after:
            legs.insert(0, Leg(Direction.AFTER, t.newest, page, page))
        tasks.append(ThreadTask(t.chat_jid, tuple(legs)))
    return tasks


# --- when a leg ends ---------------------------------------------------------------------


def leg_over(leg: Leg, asked: int, got: int, fetched: int, complete: bool) -> Optional[str]:
    """After an answer of `got` messages to a request for `asked` (`fetched` so far on
    this leg, this answer included): the leg's result word if it is over, None to ask
    the next page. Less than asked means the phone has no more to give this way."""
    if complete:
        return "complete"
    if got == 0:
        return "empty" if fetched == 0 else "ok"
    if got < asked or fetched >= leg.budget:
        return "ok"
    return None


def page_size(leg: Leg, fetched: int) -> int:
    """The next request's count: a page, or what is left of the budget."""
    return max(1, min(leg.page, leg.budget - fetched))
