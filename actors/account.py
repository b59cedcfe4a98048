"""AccountActor: one per account running here. Owns its Session and reads its Inbox (the
spool rows of this account, in order), turning raw events into store writes (through
actors/ingest.py) and into the facts it observes about the account. It keeps the account's
BackfillState (actors/backfill_state.py): the history walk a backfill or recent-sync runs.

It reports facts; it never decides its own status (the supervisor does, from the
facts). The transport's callback only appends to the spool and tells this actor to wake
up; all parsing happens here, on the actor's thread. Rows leave the spool only after the
store confirmed them, so a crash at any point replays them (harmlessly: writes are
idempotent). Long session calls (pairing by phone code) run off this thread, so the
supervisor's probes are always answered. Exceptions never escape a handler: they are
counted and reported to the supervisor, which restarts the actor.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Optional

import pykka

from wasync.actors import supervisor_protocol as sp
from wasync.actors import outbox_protocol as op
from wasync.actors.account_protocol import (AccountMsg, CancelWalk, Fault, NewFence, PairPhone, PlanRead, Probe,
                                            RequestOverdue, RequestSent, RunWalk, SendWaiting, StopSession, Summarize,
                                            Wake)
from wasync.actors.backfill_state import BackfillState
from wasync.actors.ingest import Folded, Ingest, phone_of
from wasync.actors.outbox import OutboxDeps, start_outbox
from wasync.actors.policy.health import protocol_streak
from wasync.actors.reply import answer, fail, tell_if_alive
from wasync.actors.slot import SessionSlot
from wasync.actors.writer_protocol import IngestBatch
from wasync.runtime import model as m
from wasync.runtime.account import AccountFacts, AccountPatch, Link
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.spool import SpoolRow
from wasync.runtime.store.base import Fence
from wasync.runtime.ticker import Timers
from wasync.runtime.transport.session import NotConnected, SessionFactory

log = logging.getLogger("wasync.account")

SUMMARY_EVERY_S = 300  # the per-account [realtime] summary line at info
DRAIN_ROWS = 200  # rows per wake-up: keeps the actor answering probes between bursts
# ...and at most about this much raw data: history rows are big (a chunk may hold thousands
# of messages), and one drain becomes one batch in the writer's memory.
DRAIN_BYTES = 1 << 20
HISTORY_KINDS = frozenset({"HistorySync"})  # rows that go to the writer's bulk lane
UNDECRYPTABLE_WINDOW_MS = 10 * 60_000  # undecryptable messages count towards a burst this long

# Fault.kind "block" waits on this forever: a stand-in for a handler stuck in a call
# that never returns (tests of the supervisor's liveness check).
_NEVER = threading.Event()


@dataclass(frozen=True)
class AccountDeps:
    """What every account actor is given (one set for all, made by the daemon's wiring)."""

    sessions: SessionFactory
    ingest: Ingest
    writer: pykka.ActorRef
    board: Board
    clock: Clock
    calls: Executor  # long session calls (pairing by code, history requests) and plan reads run here
    degraded_after_ms: int = 300_000
    store: object = None  # read only: the thread histories a walk plans from
    ticker: Optional[Timers] = None
    scheduler: Optional[pykka.ActorRef] = None  # told when a walk ends
    outbox: Optional[OutboxDeps] = None  # None: this account sends nothing (tests of ingest alone)


class AccountActor(pykka.ThreadingActor):
    # A hung actor is abandoned, not joined: its thread must not keep the process alive.
    use_daemon_thread = True

    def __init__(self, account_id: str, phone: Optional[str], generation: int, *, deps: AccountDeps,
                 supervisor: pykka.ActorRef, slot: SessionSlot, fresh_pairing: bool = False,
                 fence: Optional[Fence] = None):
        super().__init__()
        self.fence = fence  # the account's lease here: what its outbox claims under
        self.outbox: Optional[pykka.ActorRef] = None
        self.account_id, self.generation = account_id, generation
        self.deps, self.supervisor, self.slot = deps, supervisor, slot
        self.spool = deps.ingest.spool
        self.fresh_pairing = fresh_pairing  # forget the stored session and pair a new device
        self.cursor = 0  # last spool seq handed to the writer
        self._parked = False  # the writer had no room for our rows: wait for its Wake(room=True)
        self.facts = AccountFacts(account_id, generation, phone=phone)
        self._beat_ms: Optional[int] = None  # the protocol streak's last beat (policy/health)
        self._undecryptable: deque[int] = deque()  # wall ms of recent undecryptable messages
        self._finished = False
        self._since_summary = (0, 0)  # (real, protocol) messages since the last summary line
        self.backfill = BackfillState(account_id, deps, self.actor_ref, slot, self._walk_progress)
        # Rows up to here were spooled before this actor's session began (an earlier session
        # of the account, on this instance, in this life or an earlier one): their data is
        # written like any other, but their session events (a StreamReplaced that kicked the
        # old socket, its Disconnected, a QR) say nothing about this session. Rows adopted
        # from a dead process's spool (row.origin) say nothing about it at all.
        self._watermark = 0  # set in on_start, on this actor's thread

    # --- life cycle ------------------------------------------------------------------

    def on_start(self) -> None:
        self._watermark = self.spool.last_seq()
        if self.deps.ticker is not None:
            self.deps.ticker.every(self.actor_ref, Summarize(), SUMMARY_EVERY_S)
        self._publish()
        self.actor_ref.tell(Wake())  # replay what an earlier life left in the spool first
        ref, account_id, spool, clock, metrics = (self.actor_ref, self.account_id, self.spool, self.deps.clock,
                                                  self.deps.ingest.metrics)

        def sink(kind: str, raw: bytes) -> None:
            # On the transport's thread: durable append, wake the actor, return. Nothing else.
            started = clock.monotonic_s()
            spool.append(account_id, kind, raw)
            metrics.event_to_spool.observe(clock.monotonic_s() - started)
            metrics.events.labels(kind=kind).inc()
            try:
                ref.tell(Wake())
            except pykka.ActorDeadError:
                pass  # stored all the same: the next actor, or the sweeper, takes it

        try:
            phone = self.facts.phone
            if self.fresh_pairing:
                log.warning("[realtime] accountId=%s re-pair: forgetting the stored session", account_id)
                self.deps.sessions.forget(account_id)
                phone = None  # a phone would resume the old session
            session = self.deps.sessions.open(account_id, phone, sink)
            self.slot.put(session)
            self.facts = replace(self.facts, on_demand=session.capabilities.on_demand_history)
            self._publish()
            self.outbox = start_outbox(account_id, self.fence, self.slot, self.deps.outbox,
                                       resend_safe=session.capabilities.chosen_message_ids)
            session.start()
        except Exception as exc:
            # pykka does not call on_failure for on_start: without this the account
            # would sit there looking "connecting" and be silently deaf.
            self._session_failed(f"session could not start: {type(exc).__name__}: {exc}")

    def on_stop(self) -> None:
        self._finish()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        self.deps.ingest.metrics.actor_failures.labels(actor="account").inc()
        self._report(f"{exception_type.__name__}: {exception_value}")
        self._finish()

    def _finish(self) -> None:
        """Stop the session, hand over every row it left, tell the supervisor we are gone."""
        if self._finished:
            return
        self._finished = True
        try:
            self._stop_session()
            self._drain_all()
        except Exception:
            log.exception("[realtime] accountId=%s could not finish cleanly", self.account_id)
        self.backfill.interrupt("the account's actor stopped")
        if self.outbox is not None:
            self.outbox.stop(block=False)
        if not self.slot.killed:  # killed: the thread stopping the session says so once it has
            self._tell_supervisor(sp.ChildStopped(self.account_id, self.generation))

    # --- messages ----------------------------------------------------------------------

    def on_receive(self, message: AccountMsg):
        if self.slot.killed:
            # Replaced while stuck in a handler: the new actor owns the account now.
            if isinstance(message, PairPhone):
                fail(message.reply, NotConnected(f"account {self.account_id} is restarting"))
            self.actor_ref.stop(block=False)
            return None
        try:
            match message:
                case Wake(room=room):
                    # While the writer has no room for our rows (parked), the sink's wakes
                    # are not worth a read: the Backlog says when there is room.
                    self._parked = self._parked and not room
                    if not self._parked:
                        self._drain()
                case Probe(seq=seq):
                    # Rows can reach the spool without a Wake (adopted from a dead process's
                    # spool file): each probe drains, so none waits longer than a tick.
                    self._parked = False
                    self._drain()
                    self._answer_probe(seq)
                case StopSession():
                    self._stop_session()  # shutdown: no new events, but keep draining the spool
                    self._drain_all()
                    self.backfill.interrupt("the session stopped (shutdown)")
                    self._tell_supervisor(sp.Facts(self.facts))  # disconnected: its status says so
                    self._tell_supervisor(sp.SessionStopped(self.account_id, self.generation))
                case PairPhone(phone=phone, reply=reply):
                    self._pair_phone(phone, reply)
                case Fault(kind=kind):
                    self._fault(kind)
                case Summarize():
                    self._summarize()
                case SendWaiting():
                    self._to_outbox(op.Poke())
                case NewFence(fence=fence):
                    self.fence = fence
                    self._to_outbox(op.Refenced(fence))
                case RunWalk():
                    self.backfill.start(message, self.facts.connected)
                case PlanRead():
                    self.backfill.plan_read(message)
                case RequestSent(run_id=run_id, seq=seq, error=error) if error is not None:
                    self.backfill.request_failed(run_id, seq, error)
                case RequestOverdue(run_id=run_id, seq=seq):
                    self.backfill.request_failed(run_id, seq, "timeout")
                case CancelWalk(run_id=run_id, reason=reason):
                    self.backfill.cancel(run_id, reason)
        except Exception as exc:
            log.exception("[realtime] accountId=%s ingest failed", self.account_id)
            self.deps.ingest.metrics.actor_failures.labels(actor="account").inc()
            self._report(f"{type(exc).__name__}: {exc}")
        return None

    def _pair_phone(self, phone: str, reply) -> None:
        session = self.slot.current()
        if session is None:
            fail(reply, NotConnected(f"account {self.account_id} has no session"))
            return

        def done(call) -> None:  # on the call's thread: only the reply is touched
            if call.exception() is not None:
                fail(reply, call.exception())
            else:
                answer(reply, call.result())

        self.deps.calls.submit(session.pair_phone, phone).add_done_callback(done)

    def _summarize(self) -> None:
        """One info line per account per period, and only if messages came: 500 accounts
        must not flood journald."""
        real, protocol = self._since_summary
        if real or protocol:
            log.info("[realtime] accountId=%s summary real=%d protocol=%d periodS=%d connected=%s", self.account_id,
                     real, protocol, SUMMARY_EVERY_S, self.facts.connected)
        self._since_summary = (0, 0)

    def _to_outbox(self, message) -> None:
        if self.outbox is not None:
            tell_if_alive(self.outbox, message)

    def _fault(self, kind: str) -> None:
        log.warning("[supervisor] accountId=%s injected fault: %s", self.account_id, kind)
        if kind.startswith("outbox-crash-"):
            self._to_outbox(op.ArmCrash(kind.removeprefix("outbox-crash-")))
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "block":
            _NEVER.wait()

    def _session_failed(self, error: str) -> None:
        log.error("[realtime] accountId=%s %s", self.account_id, error)
        self._stop_session()
        self.facts = replace(self.facts, link=Link.DISCONNECTED, realtime_error=error)
        self.deps.writer.tell(IngestBatch(self.account_id, patch=AccountPatch(realtime_error=error)))
        self._publish()
        self._report(error)

    def _stop_session(self) -> None:
        session = self.slot.current()
        if session is None:
            return
        try:
            session.stop()
        except Exception:
            log.exception("[realtime] accountId=%s session did not stop cleanly", self.account_id)
        self.slot.release(session)
        self.facts = replace(self.facts, link=Link.DISCONNECTED, qr_code=None)
        self._to_outbox(op.Linked(False))
        self._publish()

    def _report(self, error: str) -> None:
        self._tell_supervisor(sp.ChildFailed(self.account_id, self.generation, error))

    def _tell_supervisor(self, message) -> None:
        try:
            self.supervisor.tell(message)
        except pykka.ActorDeadError:
            pass  # shutting down

    # --- the inbox ---------------------------------------------------------------------

    def _drain(self, more_later: bool = True) -> bool:
        """Hand the next rows to the writer; True if there may be more. With `more_later`, a
        full page asks for more with a Wake, so probes get answered between pages of a
        burst. While the writer has no room for them (its lane is full, or rows with history
        wait for a reader's turn) the rows stay in the spool, and this actor is woken when
        there is room."""
        rows = self.spool.pending(self.account_id, after_seq=self.cursor, limit=DRAIN_ROWS, max_bytes=DRAIN_BYTES)
        if not rows:
            return False
        # Live rows before a history row go on their own, so that they take the live lane.
        first_history = next((i for i, row in enumerate(rows) if row.kind in HISTORY_KINDS), None)
        cut = bool(first_history)
        if cut:
            rows = rows[:first_history]
        ref, backlog = self.actor_ref, self.deps.ingest.backlog
        if not backlog.has_room(first_history == 0, self.account_id, lambda: tell_if_alive(ref, Wake(room=True))):
            self._parked = True
            return False
        try:
            return self._hand_over(rows, more_later, cut)
        finally:
            backlog.read_done(self.account_id)

    def _hand_over(self, rows: list[SpoolRow], more_later: bool, cut: bool) -> bool:
        self.cursor = rows[-1].seq
        folded = self.deps.ingest.fold(self.account_id, rows)
        before = self.facts
        self._observe_all(folded)
        if self.facts.link_news(before):
            self._to_outbox(op.Linked(self.facts.connected))
        batch = self.backfill.tagged(folded.batch)
        self.deps.ingest.backlog.handing(batch)
        self.deps.writer.tell(batch)
        self.backfill.answers(folded)
        self._publish()
        if self._bears_on_health(before, folded):
            self._tell_supervisor(sp.Facts(self.facts))  # may change its status: say so now
        more = cut or len(rows) == DRAIN_ROWS or sum(len(row.raw) for row in rows) >= DRAIN_BYTES
        if more_later and more:
            self.actor_ref.tell(Wake())
        return more

    def _drain_all(self) -> None:
        """Every row the writer has room for, now (the session is stopped; the actor may be
        stopping already). What it has no room for stays in the spool for the next start."""
        while self._drain(more_later=False):
            pass

    def _bears_on_health(self, before: AccountFacts, folded: Folded) -> bool:
        """Whether this drain may change the account's status: its link moved, or signs of a
        deaf or broken session came in (protocol-only traffic, keepalive trouble, undecryptable
        messages). Plain traffic is reported with the next probe, not per drain."""
        f = self.facts
        return ((before.link, before.logged_out_reason, before.keepalive_timeouts)
                != (f.link, f.logged_out_reason, f.keepalive_timeouts)
                or folded.protocol > 0
                or any(isinstance(event, m.UndecryptableMessage) for _, event in folded.events))

    def _observe_all(self, folded: Folded) -> None:
        run: list[tuple[SpoolRow, m.Message]] = []  # live messages in a row: the facts move once for them
        for row, event in folded.events:
            if isinstance(event, m.Message):
                if row.origin is None:  # adopted from a process that is gone: see _observe
                    run.append((row, event))
                continue
            if run:
                self._observe_messages(run)
                run = []
            self._observe(event, row)
        if run:
            self._observe_messages(run)
        if folded.real or folded.protocol:
            # Per drain at debug (a degraded account drains every 2 s); Summarize says it at info.
            log.debug("[realtime] accountId=%s real=%d protocol=%d", self.account_id, folded.real, folded.protocol)
            self._since_summary = (self._since_summary[0] + folded.real, self._since_summary[1] + folded.protocol)

    def _observe(self, event: m.NormalizedEvent, row: SpoolRow) -> None:
        """Move the facts; tell the supervisor what it must act on (real messages: see
        _observe_messages). Times are when the row arrived: a replayed backlog keeps its
        spacing and counts for the session it came in."""
        if row.origin is not None:
            return  # adopted from a process that is gone: its data is written, its session was not this one
        if row.seq <= self._watermark and isinstance(event, m.SessionEvent.__args__):
            return  # an earlier session's (see _watermark)
        now = row.received_at_ms
        f = self.facts
        match event:
            case m.ProtocolMessage():
                start, beats, self._beat_ms = protocol_streak(
                    f.protocol_streak_start_ms, f.protocol_streak_beats, self._beat_ms, f.last_protocol_message_ms,
                    now, self.deps.degraded_after_ms)
                f = replace(f, last_protocol_message_ms=now, protocol_messages=f.protocol_messages + 1,
                            protocol_streak_start_ms=start, protocol_streak_beats=beats)
            case m.HistoryBatch():
                if event.sync_type is not m.HistorySyncType.ON_DEMAND:
                    # The phone pushing its history proves the session is not deaf (and a
                    # big initial sync comes with minutes of protocol notices). Answers to
                    # our own requests prove nothing about live delivery, and are no sync.
                    f = self._streak_ended(replace(f, last_history_sync_ms=now))
            case m.Connected():
                f = self._streak_ended(replace(f, link=Link.CONNECTED, connected_since_ms=now, keepalive_timeouts=0))
            case m.Disconnected():
                if f.link is not Link.PAIRING:
                    f = replace(f, link=Link.DISCONNECTED)
            case m.StreamReplaced():
                f = replace(f, link=Link.DISCONNECTED)
                self.deps.ingest.metrics.account_stream_replaced.labels(self.account_id).inc()
                log.warning("[lease] accountId=%s StreamReplaced: another client owns this session", self.account_id)
                self._tell_supervisor(sp.SessionReplaced(self.account_id, self.generation))
            case m.LoggedOut():
                f = replace(f, link=Link.DISCONNECTED, logged_out_reason=event.reason)
                self._tell_supervisor(sp.SessionLoggedOut(self.account_id, self.generation, event.reason))
            case m.TemporaryBan():
                f = replace(f, link=Link.DISCONNECTED)
                self._tell_supervisor(sp.SessionBanned(self.account_id, self.generation,
                                                       event.code or "temporary ban",
                                                       max(1, event.expires_in_s) * 1000))
            case m.KeepAliveTimeout():
                f = replace(f, keepalive_timeouts=max(event.error_count, f.keepalive_timeouts + 1))
            case m.KeepAliveRestored():
                f = replace(f, keepalive_timeouts=0)
            case m.UndecryptableMessage():
                self._undecryptable.append(now)
            case m.QrCode():
                f = replace(f, link=Link.PAIRING, qr_code=event.codes[0] if event.codes else None)
            case m.PairSuccess():
                phone = phone_of(event.jid)
                f = replace(f, qr_code=None, link=Link.CONNECTING if f.link is Link.PAIRING else f.link,
                            logged_out_reason=None, jid=event.jid, phone=phone)
                self._tell_supervisor(sp.SessionPaired(self.account_id, self.generation, event.jid, phone))
            case m.ConnectFailure():
                self.deps.ingest.metrics.connect_failures.labels(str(event.reason) or "unknown").inc()
                f = replace(f, realtime_error=f"connect failure: {event.reason} {event.message}".strip())
        self.facts = f

    def _observe_messages(self, run: list[tuple[SpoolRow, m.Message]]) -> None:
        """Real messages, in order (a backlog brings hundreds per page): one move of the facts."""
        (row, event) = run[-1]
        self.facts = self._streak_ended(replace(
            self.facts, last_real_message_ms=row.received_at_ms, real_messages=self.facts.real_messages + len(run),
            realtime_ingest_ms=self.deps.clock.wall_ms(), realtime_message_ms=event.ts_client_ms))

    def _streak_ended(self, f: AccountFacts) -> AccountFacts:
        self._beat_ms = None
        return replace(f, protocol_streak_start_ms=None, protocol_streak_beats=0)

    def _walk_progress(self, progress) -> None:
        self.facts = replace(self.facts, walk=progress)
        self._publish()

    # --- facts out ---------------------------------------------------------------------

    def _answer_probe(self, seq: int) -> None:
        now = self.deps.clock.wall_ms()
        while self._undecryptable and self._undecryptable[0] <= now - UNDECRYPTABLE_WINDOW_MS:
            self._undecryptable.popleft()
        session = self.slot.current()
        failure = getattr(session, "failure", None) if session is not None else None
        self.facts = replace(self.facts, undecryptable_recent=len(self._undecryptable),
                             session_failure=None if failure is None else f"{type(failure).__name__}: {failure}")
        self._publish()
        self._tell_supervisor(sp.Facts(self.facts, probe_seq=seq))

    def _publish(self) -> None:
        self.deps.board.publish_facts(self.facts)

