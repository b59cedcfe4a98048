"""SchedulerActor: decides when a backfill, a recent-sync or a thread repair runs, for the
accounts this instance runs (DESIGN.md: "the scheduler alone decides when").

A run's life: pick (actors/policy/backfill.py) → take the job lock in the store, fenced
by the account's lease epoch, and store "running" → the account's actor walks the threads
(`RunWalk`, through the supervisor, which owns the actors) → store the result, repair the
threads after a backfill, release the lock. Store calls run on the executor and come back
as messages: the scheduler never waits, so a frozen store delays runs, not the ticks. A
lock that is never released (the process died) lapses after AUTO_BACKFILL_LEASE_MS /
RECENT_SYNC_LEASE_MS; a run past that time is cancelled and stored as an error.

Which accounts run here and whether they are connected is read from the board (the
supervisor's published state, with the lease's holder and epoch); the stored job times
that cooldowns and backoffs need are read from the store at each decision, so they hold
across restarts and moves.
"""
from __future__ import annotations

import itertools
import logging
import random
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Callable, Optional

import pykka

from wasync.actors import account_protocol as ap
from wasync.actors.policy import backfill as policy
from wasync.actors.reply import Reply, answer, fail, tell_if_alive
from wasync.actors.scheduler_protocol import (AutoBackfillTick, BackfillRunning, LockAnswer, RecentSyncTick,
                                              RecordsRead, RunClosed, RunOverdue, SchedulerMsg, StartBackfill,
                                              Started, WalkFinished, Watch)
from wasync.actors.supervisor_protocol import ToAccount
from wasync.runtime.account import AccountPatch, AccountState, JobTimes
from wasync.runtime.backfill import Job, JobOutcome, JobRun, Trigger
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.store.base import Fence, StaleFence, StoreError
from wasync.runtime.ticker import Timers
from wasync.runtime.transport.session import NotConnected

log = logging.getLogger("wasync.scheduler")

WATCH_EVERY_S = 2.0
CANCEL_GRACE_S = 30.0  # a cancelled walk that does not report by then is closed as interrupted
OVERDUE_SHARE = 0.9  # of the job lock: a run still going then is cancelled before the lock lapses
# An automatic backfill waits until the phone's history sync has been quiet this long: a
# run planned from half an initial sync would walk from the wrong place and then rest
# for the whole cooldown.
HISTORY_QUIET_MS = 20_000


@dataclass(frozen=True)
class SchedulerConfig:
    """The SPEC §3 settings the scheduler runs by (runtime/daemon.py builds it)."""

    instance_id: str
    auto_backfill: bool
    backfill_interval_s: float
    auto: policy.AutoRules
    backfill: policy.BackfillRules
    backfill_lock_ms: int
    recent_sync: bool
    recent_interval_s: float
    recent: policy.RecentRules
    recent_interval_ms: int
    recent_concurrency: int
    recent_lock_ms: int
    repair: bool
    repair_limit: int
    repair_cooldown_ms: int

    @classmethod
    def from_settings(cls, s) -> "SchedulerConfig":
        return cls(
            instance_id=s.instance_id, auto_backfill=s.auto_backfill_enabled,
            backfill_interval_s=s.backfill_interval_ms / 1000,
            auto=policy.AutoRules(s.backfill_cooldown_ms, s.auto_backfill_attempt_backoff_ms,
                                  s.auto_backfill_max_accounts_per_tick, s.backfill_concurrency),
            backfill=policy.BackfillRules(s.backfill_threads, s.backfill_count, s.backfill_messages_per_thread,
                                          s.backfill_max_days),
            backfill_lock_ms=s.auto_backfill_lease_ms, recent_sync=s.recent_sync_enabled,
            recent_interval_s=s.recent_sync_interval_ms / 1000,
            recent=policy.RecentRules(s.recent_sync_lookback_ms, s.recent_sync_max_threads,
                                      s.recent_sync_max_messages_per_thread),
            recent_interval_ms=s.recent_sync_interval_ms, recent_concurrency=s.recent_sync_max_concurrency,
            recent_lock_ms=s.recent_sync_lease_ms, repair=s.auto_repair_threads_enabled,
            repair_limit=s.auto_repair_threads_limit_per_run, repair_cooldown_ms=s.auto_repair_cooldown_ms)


@dataclass
class Run:
    run_id: str
    account_id: str
    job: Job
    trigger: Trigger
    fence: Fence
    started_ms: int
    reply: Optional[Reply] = None  # an operator waits for "started"
    phase: str = "locking"  # locking -> walking -> closing
    timer: object = None
    outcome: Optional[JobOutcome] = None  # once the walk ended

    def patch(self, outcome: Optional[JobOutcome] = None, finished_ms: Optional[int] = None) -> AccountPatch:
        news = JobRun(self.job, self.trigger, self.started_ms, self.fence.holder, outcome, finished_ms)
        return AccountPatch(backfill=news) if self.job is Job.BACKFILL else AccountPatch(recent_sync=news)


class SchedulerActor(pykka.ThreadingActor):
    def __init__(self, store, board: Board, metrics: Metrics, ticker: Timers, clock: Clock, calls: Executor,
                 config: SchedulerConfig, to_supervisor: Callable[[object], None],
                 rng: Optional[random.Random] = None):
        super().__init__()
        self.store, self.board, self.metrics, self.ticker, self.clock = store, board, metrics, ticker, clock
        self.calls, self.config, self.to_supervisor = calls, config, to_supervisor
        self.rng = rng or random.Random()
        self.runs: dict[str, Run] = {}
        self._ids = itertools.count(1)
        self._seen_connect: dict[str, Optional[int]] = {}  # account -> connected_since_ms last seen
        self._connect_due: dict[str, int] = {}  # account -> wall ms its connect backfill is due
        self._periodic = False  # an auto-backfill tick waits for its records read
        self._reading: set[Job] = set()  # records reads in flight, by purpose
        self._recent_queue: list[str] = []  # recent-syncs due, waiting for a free slot
        self._times: dict[str, JobTimes] = {}  # job times as last read, plus what ran since
        self._timers: list = []

    # --- life cycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        c = self.config
        self._timers.append(self.ticker.every(self.actor_ref, Watch(), WATCH_EVERY_S))
        if c.auto_backfill:
            self._timers.append(self.ticker.every(self.actor_ref, AutoBackfillTick(), c.backfill_interval_s))
        if c.recent_sync:
            self._timers.append(self.ticker.every(self.actor_ref, RecentSyncTick(), c.recent_interval_s))

    def on_stop(self) -> None:
        """Shutdown: the walks ended with their actors; store that and release the locks now,
        so the instance taking the accounts over need not wait for the locks to lapse."""
        for timer in self._timers:
            timer.cancel()
        now = self.clock.wall_ms()
        for run in list(self.runs.values()):
            if run.phase != "walking":
                continue  # locking: its lock may still land and lapses on its own; closing: on its way
            outcome = JobOutcome(ok=False, error_code="interrupted", error_message="the daemon stopped",
                                 duration_ms=now - run.started_ms)
            self._close(run, outcome, self._times.get(run.account_id, JobTimes()))
            self._count(run, outcome)

    # --- messages ------------------------------------------------------------------------

    def on_receive(self, message: SchedulerMsg):
        try:
            self._handle(message)
        except Exception:
            log.exception("[auto-backfill] unexpected error handling %s", type(message).__name__)
            self.metrics.actor_failures.labels(actor="scheduler").inc()
        return None

    def _handle(self, message: SchedulerMsg) -> None:
        match message:
            case Watch():
                self._watch()
            case AutoBackfillTick():
                self._periodic = True
                self._read(Job.BACKFILL)
            case RecentSyncTick():
                self._read(Job.RECENT_SYNC)
            case RecordsRead():
                self._records_read(message)
            case StartBackfill(account_id=account_id, reply=reply):
                self._manual(account_id, reply)
            case LockAnswer():
                self._lock_answer(message)
            case WalkFinished(run_id=run_id, outcome=outcome):
                run = self.runs.get(run_id)
                if run is not None and run.phase == "walking":
                    self._finish(run, outcome)
            case RunOverdue(run_id=run_id, final=final):
                self._overdue(run_id, final)
            case RunClosed():
                self._closed(message)

    # --- deciding --------------------------------------------------------------------------

    def _here(self) -> dict[str, AccountState]:
        """Accounts this instance runs, connected, under a lease it holds (with its epoch)."""
        me = self.config.instance_id
        return {a.account_id: a for a in self.board.snapshot().accounts
                if a.running and a.connected and a.lease_holder == me and a.lease_epoch is not None}

    def _busy(self, account_id: str) -> bool:
        return any(r.account_id == account_id for r in self.runs.values())

    def _watch(self) -> None:
        """Notice connections (a backfill follows 10-40 s later); start connect backfills due."""
        here = self._here()
        now = self.clock.wall_ms()
        for account_id, state in here.items():
            if self._seen_connect.get(account_id) != state.connected_since_ms:
                self._seen_connect[account_id] = state.connected_since_ms
                if self.config.auto_backfill:
                    delay_s = policy.connect_delay_s(self.rng)
                    self._connect_due[account_id] = now + int(delay_s * 1000)
                    log.debug("[auto-backfill] accountId=%s connected: a backfill is due in %.1f s", account_id,
                              delay_s)
        for gone in set(self._seen_connect) - set(here):
            self._seen_connect.pop(gone, None)
            self._connect_due.pop(gone, None)
        if any(due <= now for due in self._connect_due.values()):
            self._read(Job.BACKFILL)
        if self._recent_queue:
            self._start_recent(here)

    def _read(self, purpose: Job) -> None:
        """Read the stored job times (one read per purpose at a time), then decide."""
        if purpose in self._reading:
            return
        self._reading.add(purpose)
        store, ref = self.store, self.actor_ref

        def read():
            return tuple(store.list_account_records())

        def done(call) -> None:
            error = call.exception()
            tell_if_alive(ref, RecordsRead(purpose, () if error else call.result(),
                                   None if error is None else f"{type(error).__name__}: {error}"))

        self.calls.submit(read).add_done_callback(done)

    def _records_read(self, msg: RecordsRead) -> None:
        self._reading.discard(msg.purpose)
        if msg.error is not None:
            log.warning("[auto-backfill] could not read the accounts' job times: %s", msg.error)
            return
        for record in msg.records:
            self._times[record.account_id] = policy.later_times(self._times.get(record.account_id), record.jobs)
        here = self._here()
        if msg.purpose is Job.BACKFILL:
            self._pick_backfills(here)
        else:
            times = [(a, self._times.get(a, JobTimes())) for a, s in here.items() if s.on_demand]
            self._recent_queue = policy.pick_recent_syncs(times, self.clock.wall_ms(), self.config.recent_interval_ms,
                                                          slots=len(times))
            self._start_recent(here)

    def _pick_backfills(self, here: dict[str, AccountState]) -> None:
        now = self.clock.wall_ms()
        due = {a for a, at in self._connect_due.items() if at <= now and a in here}
        wanted = set(here) if self._periodic else due
        self._periodic = False
        syncing = {a for a in wanted if (here[a].last_history_sync_ms or 0) > now - HISTORY_QUIET_MS}
        idle = [(a, self._times.get(a, JobTimes())) for a in sorted(wanted - syncing) if not self._busy(a)]
        for account_id, times in idle:
            reason = policy.skip_reason(times, now, self.config.auto)
            if reason is not None and account_id in due:
                del self._connect_due[account_id]  # connected within the cooldown: nothing to do
                log.info("[auto-backfill] accountId=%s skipped after connect: %s", account_id, reason)
        running = sum(1 for r in self.runs.values() if r.job is Job.BACKFILL and r.trigger is not Trigger.MANUAL)
        for account_id in policy.pick_auto_backfills(idle, now, self.config.auto, running):
            trigger = Trigger.CONNECT if self._connect_due.pop(account_id, None) is not None else Trigger.PERIODIC
            self._start(here[account_id], Job.BACKFILL, trigger)

    def _start_recent(self, here: dict[str, AccountState]) -> None:
        running = sum(1 for r in self.runs.values() if r.job is Job.RECENT_SYNC)
        while self._recent_queue and running < self.config.recent_concurrency:
            account_id = self._recent_queue.pop(0)
            if account_id in here and not self._busy(account_id):
                self._start(here[account_id], Job.RECENT_SYNC, Trigger.PERIODIC)
                running += 1

    def _manual(self, account_id: str, reply: Reply) -> None:
        state = self.board.account(account_id)
        me = self.config.instance_id
        if state is None or not state.running or state.lease_holder != me or state.lease_epoch is None:
            fail(reply, NotConnected(f"account {account_id} is not running on this instance"))
            return
        busy = next((r for r in self.runs.values() if r.account_id == account_id), None)
        if busy is not None:
            fail(reply, BackfillRunning(account_id, me, busy.run_id))
            return
        if not state.connected:
            fail(reply, NotConnected(f"account {account_id} is not connected ({state.status.value})"))
            return
        self._start(state, Job.BACKFILL, Trigger.MANUAL, reply)

    # --- running ---------------------------------------------------------------------------

    def _start(self, state: AccountState, job: Job, trigger: Trigger, reply: Optional[Reply] = None) -> None:
        c = self.config
        run = Run(f"{job.value}-{c.instance_id}-{next(self._ids)}", state.account_id, job, trigger,
                  Fence(c.instance_id, state.lease_epoch), self.clock.wall_ms(), reply)
        self.runs[run.run_id] = run
        ttl = c.backfill_lock_ms if job is Job.BACKFILL else c.recent_lock_ms
        store, ref, holder = self.store, self.actor_ref, c.instance_id

        def take() -> LockAnswer:
            lock = store.acquire_job_lock(job.value, run.account_id, holder, run.started_ms, ttl, run.fence)
            if lock is None:
                other = store.get_job_lock(job.value, run.account_id)
                return LockAnswer(run.run_id, False, other.owner if other else None)
            store.update_account(run.account_id, run.patch(), run.started_ms, run.fence)
            return LockAnswer(run.run_id, True)

        def done(call) -> None:
            error = call.exception()
            if error is None:
                tell_if_alive(ref, call.result())
            else:
                tell_if_alive(ref, LockAnswer(run.run_id, False, error=f"{type(error).__name__}: {error}",
                                      fenced=isinstance(error, StaleFence)))

        self.calls.submit(take).add_done_callback(done)
        self.metrics.backfill_running.labels(job.value).inc()

    def _lock_answer(self, msg: LockAnswer) -> None:
        run = self.runs.get(msg.run_id)
        if run is None or run.phase != "locking":
            return
        if not msg.held:
            del self.runs[run.run_id]
            self.metrics.backfill_running.labels(run.job.value).dec()
            result = "fenced" if msg.fenced else ("error" if msg.error else "locked")
            self._counter(run.job).labels(result).inc()
            log.info("[backfill-lock] accountId=%s job=%s not started: %s", run.account_id, run.job.value,
                     msg.error or f"held by {msg.holder}")
            if run.reply is not None:
                fail(run.reply, BackfillRunning(run.account_id, msg.holder) if msg.error is None
                     else StoreError(msg.error))
            return
        run.phase = "walking"
        ttl_ms = self.config.backfill_lock_ms if run.job is Job.BACKFILL else self.config.recent_lock_ms
        run.timer = self.ticker.later(self.actor_ref, RunOverdue(run.run_id), ttl_ms * OVERDUE_SHARE / 1000)
        log.info("[backfill-lock] accountId=%s job=%s acquired holder=%s epoch=%d trigger=%s", run.account_id,
                 run.job.value, run.fence.holder, run.fence.epoch, run.trigger.value)
        if run.reply is not None:
            answer(run.reply, Started(run.run_id, run.account_id))
        rules = self.config.backfill if run.job is Job.BACKFILL else self.config.recent
        threads = self.config.backfill.threads if run.job is Job.BACKFILL else self.config.recent.threads
        # Read more threads than the run visits when idle ones are skipped (max days).
        self.to_supervisor(ToAccount(run.account_id, ap.RunWalk(run.run_id, run.job, run.trigger, rules, threads),
                                     on_absent=WalkFinished(run.account_id, run.run_id, JobOutcome(
                                         ok=False, error_code="not_running",
                                         error_message="the account is not running here"))))

    def _overdue(self, run_id: str, final: bool) -> None:
        run = self.runs.get(run_id)
        if run is None or run.phase != "walking":
            return
        if not final:
            log.warning("[auto-backfill] accountId=%s run %s is out of time: cancelling it", run.account_id, run_id)
            self.to_supervisor(ToAccount(run.account_id, ap.CancelWalk(run_id, "out of time")))
            run.timer = self.ticker.later(self.actor_ref, RunOverdue(run_id, final=True), CANCEL_GRACE_S)
            return
        self._finish(run, JobOutcome(ok=False, error_code="interrupted", error_message="the walk never reported",
                                     duration_ms=self.clock.wall_ms() - run.started_ms))

    def _finish(self, run: Run, outcome: JobOutcome) -> None:
        run.phase, run.outcome = "closing", outcome
        if run.timer is not None:
            run.timer.cancel()
        ref = self.actor_ref
        call = self.calls.submit(self._close, run, outcome, self._times.get(run.account_id, JobTimes()))
        call.add_done_callback(lambda c: tell_if_alive(ref, c.result() if c.exception() is None else RunClosed(
            run.run_id, error=f"{type(c.exception()).__name__}: {c.exception()}")))
        self._count(run, outcome)

    def _close(self, run: Run, outcome: JobOutcome, times: JobTimes) -> RunClosed:
        """Off the actor's thread: store the result, repair after a backfill, release the lock.
        Each step is tried even if one before failed: the lock must not be kept."""
        c, store = self.config, self.store
        now = self.clock.wall_ms()
        errors, repaired = [], None
        try:
            store.update_account(run.account_id, run.patch(outcome, now), now, run.fence)
        except Exception as exc:
            errors.append(f"result not stored: {exc}")
        if run.job is Job.BACKFILL and c.repair and policy.repair_due(times, now, c.repair_cooldown_ms):
            try:
                repaired = store.repair_threads(run.account_id, c.repair_limit, now)
                store.update_account(run.account_id, AccountPatch(auto_repair_ms=now), now, run.fence)
            except Exception as exc:
                errors.append(f"thread repair failed: {exc}")
        try:
            store.release_job_lock(run.job.value, run.account_id, c.instance_id)
        except Exception as exc:
            errors.append(f"lock not released (it lapses): {exc}")
        return RunClosed(run.run_id, repaired, "; ".join(errors) or None)

    def _closed(self, msg: RunClosed) -> None:
        run = self.runs.pop(msg.run_id, None)
        if run is None:
            return
        self.metrics.backfill_running.labels(run.job.value).dec()
        self._remember(run, msg.repaired is not None)
        if msg.repaired is not None:
            self.metrics.threads_repaired.inc(msg.repaired.fixed)
            log.info("[schema-guard] accountId=%s threads checked=%d repaired=%d missingFields=%d", run.account_id,
                     msg.repaired.checked, msg.repaired.fixed, len(msg.repaired.missing))
            for thread_id in msg.repaired.missing[:20]:
                log.warning("[schema-guard] accountId=%s threadId=%s lacked lastMessageAt/Ms/Preview (repaired)",
                            run.account_id, thread_id)
        if msg.error is not None:
            log.error("[auto-backfill] accountId=%s run %s: %s", run.account_id, run.run_id, msg.error)
        if run.job is Job.RECENT_SYNC:
            self._start_recent(self._here())

    def _remember(self, run: Run, repaired: bool) -> None:
        """What this run changed in the account's job times (the stored ones say the same,
        but the next read may predate the write)."""
        t = self._times.get(run.account_id, JobTimes())
        now, ok = self.clock.wall_ms(), run.outcome is not None and run.outcome.ok
        if run.job is Job.BACKFILL:
            t = replace(t, last_auto_backfill_ms=run.started_ms, last_auto_backfill_attempt_ms=run.started_ms,
                        last_auto_backfill_ok=ok,
                        last_auto_backfill_success_ms=now if ok else t.last_auto_backfill_success_ms)
        else:
            t = replace(t, last_recent_sync_ms=run.started_ms)
        self._times[run.account_id] = replace(t, last_auto_repair_ms=now) if repaired else t

    def _count(self, run: Run, outcome: JobOutcome) -> None:
        """Metrics and the operator's log line for a run that ended."""
        if not outcome.on_demand:
            result = "unavailable"
        elif outcome.ok:
            result = "ok"
        else:
            result = "interrupted" if outcome.error_code in ("interrupted", "cancelled") else "error"
        self._counter(run.job).labels(result).inc()
        self.metrics.backfill_messages.labels(run.job.value).inc(outcome.messages)
        if run.job is Job.BACKFILL and outcome.on_demand and outcome.thread_results:
            incomplete = sum(1 for _, _, word in outcome.thread_results if word not in ("complete", "idle"))
            self.metrics.threads_incomplete.labels(run.account_id).set(incomplete)
        tag = "[auto-backfill]" if run.job is Job.BACKFILL else "[recent-sync]"
        log.info("%s accountId=%s trigger=%s result=%s threads=%d messages=%d errors=%d durationMs=%d onDemand=%s%s",
                 tag, run.account_id, run.trigger.value, result, outcome.threads, outcome.messages, outcome.errors,
                 outcome.duration_ms, "available" if outcome.on_demand else "unavailable",
                 f" error={outcome.error_code}: {outcome.error_message}" if not outcome.ok else "")

    def _counter(self, job: Job):
        return self.metrics.backfill_runs if job is Job.BACKFILL else self.metrics.recent_sync_runs
