"""BackfillState: an account's history walk in motion, kept by its AccountActor (DESIGN.md:
the account actor owns its BackfillState). Runs on the actor's thread only.

The scheduler orders a walk (`RunWalk`); the plan is read from the store off the actor's
thread, requests are sent off it too, and everything comes back as a message to the
actor, which hands it here. Answers arrive through the spool like any other event and
are passed in from the actor's drain. Each finished thread's result is written on its
thread document; the outcome goes back to the scheduler (`WalkFinished`). The walk
itself (what to ask next, which answer matches) is the pure HistoryWalk.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional

import pykka

from wasync.actors.account_protocol import PlanRead, RequestOverdue, RequestSent, RunWalk
from wasync.actors.backfill import HistoryWalk
from wasync.actors.ingest import Folded
from wasync.actors.policy.backfill import BackfillRules, backfill_plan, recent_sync_plan
from wasync.actors.reply import tell_if_alive
from wasync.actors.scheduler_protocol import WalkFinished
from wasync.actors.slot import SessionSlot
from wasync.actors.writer_protocol import IngestBatch
from wasync.runtime import model as m
from wasync.runtime.backfill import Job, JobOutcome, Progress
from wasync.runtime.transport.session import SessionError

if TYPE_CHECKING:
    from wasync.actors.account import AccountDeps

log = logging.getLogger("wasync.account")

ANSWER_WAIT_S = 30.0  # a history request not answered by then ends its thread with "timeout"
RESULT_CHARS = 100  # of a thread's result word kept on its document


class BackfillState:
    def __init__(self, account_id: str, deps: "AccountDeps", actor_ref: pykka.ActorRef, slot: SessionSlot,
                 on_progress: Callable[[Optional[Progress]], None]):
        self.account_id, self.deps, self.actor_ref, self.slot = account_id, deps, actor_ref, slot
        self.on_progress = on_progress  # the actor publishes it with its facts
        self._order: Optional[RunWalk] = None  # the walk asked for (planning or walking)
        self._walk: Optional[HistoryWalk] = None

    # --- what the actor hands in ------------------------------------------------------

    def start(self, order: RunWalk, connected: bool) -> None:
        if self._order is not None:
            self._report(order, JobOutcome(ok=False, error_code="busy",
                                           error_message=f"run {self._order.run_id} is walking"))
            return
        session = self.slot.current()
        if session is None or not connected:
            self._report(order, JobOutcome(ok=False, error_code="not_connected",
                                           error_message="the session is not connected"))
            return
        if not session.capabilities.on_demand_history:
            # Honest about it: nothing can be asked; the scheduler still repairs threads.
            self._report(order, JobOutcome(ok=True, on_demand=False))
            return
        self._order = order
        lookback = getattr(order.rules, "lookback_ms", None)
        active_since = None if lookback is None else self.deps.clock.wall_ms() - lookback
        store, account_id, ref, run_id = self.deps.store, self.account_id, self.actor_ref, order.run_id

        def read():
            return tuple(store.list_thread_histories(account_id, order.threads_read, active_since))

        def done(call) -> None:  # on the call's thread: only a tell
            error = call.exception()
            tell_if_alive(ref, PlanRead(run_id, () if error else call.result(),
                                        None if error is None else f"{type(error).__name__}: {error}"))

        self.deps.calls.submit(read).add_done_callback(done)

    def plan_read(self, msg: PlanRead) -> None:
        order = self._order
        if order is None or order.run_id != msg.run_id or self._walk is not None:
            return
        if msg.error is not None:
            self.end("store_error", msg.error)
            return
        now = self.deps.clock.wall_ms()
        session = self.slot.current()
        can_after = session is not None and session.capabilities.history_after
        if isinstance(order.rules, BackfillRules):
            tasks = backfill_plan(msg.threads, now, order.rules, can_after)
        else:
            tasks = recent_sync_plan(msg.threads, now, order.rules, can_after)
        self._walk = HistoryWalk(order.run_id, order.job, order.trigger, tasks, now)
        self._pump()

    def request_failed(self, run_id: str, seq: int, word: str) -> None:
        """A request could not be sent (`word` says why) or was never answered ("timeout")."""
        walk = self._walk
        if walk is None or walk.run_id != run_id or not walk.failed(seq, word):
            return
        if word == "timeout":
            log.warning("[auto-backfill] accountId=%s history request %d not answered in %.0f s",
                        self.account_id, seq, ANSWER_WAIT_S)
        self._pump()

    def cancel(self, run_id: str, reason: str) -> None:
        if self._order is not None and self._order.run_id == run_id:
            self.end("cancelled", reason)

    def interrupt(self, reason: str) -> None:
        """The session stops or the actor ends: a walk going on ends here."""
        if self._order is not None:
            self.end("interrupted", reason)

    def answers(self, folded: Folded) -> None:
        """Hand the walk the ON_DEMAND conversations of a drain; go on if one answered."""
        if self._walk is None:
            return
        matched = False
        for row, event in folded.events:
            if row.origin is not None or not isinstance(event, m.HistoryBatch):
                continue
            if event.sync_type is not m.HistorySyncType.ON_DEMAND:
                continue
            for thread in event.threads:
                messages = [msg for msg in event.messages if msg.client_jid == thread.client_jid]
                matched |= self._walk.answered(thread.client_jid, messages, bool(thread.history_complete))
        if matched:
            self._pump()

    def tagged(self, batch: IngestBatch) -> IngestBatch:
        """On-demand answers arrive as `backfill`; while a recent-sync walks, they are its."""
        if self._walk is None or self._walk.job is not Job.RECENT_SYNC:
            return batch
        messages = tuple(replace(msg, sync_source=m.SyncSource.RECENT_SYNC)
                         if msg.sync_source is m.SyncSource.BACKFILL else msg for msg in batch.messages)
        return replace(batch, messages=messages)

    # --- inside ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send the walk's next request; write what finished; end the walk when it is over."""
        walk = self._walk
        req = walk.next_request()
        while req is not None and self.slot.current() is None:
            walk.failed(req.seq, "not_connected")
            req = walk.next_request()
        if req is not None:
            ref, run_id, seq = self.actor_ref, walk.run_id, req.seq

            def sent(call) -> None:  # on the call's thread: only a tell
                error = call.exception()
                if error is not None:
                    word = error.reason if isinstance(error, SessionError) else "error"
                    tell_if_alive(ref, RequestSent(run_id, seq, f"{word}: {error}"))

            self.deps.calls.submit(self.slot.current().request_history, req.chat_jid, req.anchor, req.count,
                                   req.direction).add_done_callback(sent)
            self.deps.ticker.later(self.actor_ref, RequestOverdue(run_id, seq), ANSWER_WAIT_S)
        self._write_finished(walk)
        if walk.done:
            self.end()
        else:
            self.on_progress(walk.progress())

    def end(self, error_code: Optional[str] = None, error_message: Optional[str] = None) -> None:
        order, walk = self._order, self._walk
        self._order = self._walk = None
        now = self.deps.clock.wall_ms()
        if walk is None:
            outcome = JobOutcome(ok=False, error_code=error_code or "error", error_message=error_message)
        else:
            if error_code is not None:
                walk.cancel(error_code)
            self._write_finished(walk)
            outcome = walk.outcome(now)
            if error_code is not None:
                outcome = replace(outcome, ok=False, error_code=error_code, error_message=error_message)
        self.on_progress(None)
        self._report(order, outcome)

    def _write_finished(self, walk: HistoryWalk) -> None:
        """Each thread's result on its document (lastBackfillAt, lastBackfillResult)."""
        finished = walk.take_finished()
        if finished:
            now = self.deps.clock.wall_ms()
            self.deps.writer.tell(IngestBatch(self.account_id, threads=tuple(
                m.ThreadUpdate(self.account_id, chat, last_backfill_at_ms=now,
                               last_backfill_result=word[:RESULT_CHARS])
                for chat, _, word in finished)))

    def _report(self, order: RunWalk, outcome: JobOutcome) -> None:
        if self.deps.scheduler is not None:
            tell_if_alive(self.deps.scheduler, WalkFinished(self.account_id, order.run_id, outcome))
