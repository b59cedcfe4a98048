"""SupervisorActor: one AccountActor per account this instance runs, watched, restarted,
or handed to a human (DESIGN.md "Supervision"). It alone decides and publishes each
account's status and repair state; the account actors report facts.

pykka has no links or monitors, so it builds them (actors/supervisor_protocol.py):
- failure hook: a child that fails tells it `ChildFailed`; a child that stops, for any
  reason, tells it `ChildStopped` once its session is stopped and its rows handed over;
- liveness: every tick each child gets a `Probe` and must answer with its `Facts` within
  WASYNC_HUNG_AFTER_MS. A child that does not is stuck in a handler: it is abandoned
  (its session killed on a thread of its own, the actor unregistered) and a new actor
  replays the account's spool rows.

It never waits: children are stopped with `stop(block=False)` and a new actor for the
same account starts only after the old one reported `ChildStopped` (two sessions of one
account would fight), or after STOP_CHILD_S, when it is abandoned like a hung one. Store
reads happen in the lease coordinator's helper, long session calls off the children's threads.

What it does with what it hears is decided by the pure policies in actors/policy/:
restarts wait an exponential backoff and count against an intensity limit (beyond it:
`needs_repair` + alert); a degraded session is restarted once, and if the restart did not
heal it the account needs a human; a logout needs a human at once; a temporary ban is
waited out; StreamReplaced stops the account (another client owns the session; never
fight it at once: one reconnect a lease later while the lease stays here, then a hold). Every start takes a slot from the shared StartGate so a fleet never connects
at once. Timers go through the ticker (one heap for every pending start).
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
from typing import Callable, Optional

import pykka

from wasync.actors import supervisor_protocol as sp
from wasync.actors.account_protocol import Fault, NewFence, PairPhone, Probe, StopSession
from wasync.actors.leases_protocol import AccountStopped, FenceRejected
from wasync.actors.leases_protocol import SessionReplaced as LeaseSessionReplaced
from wasync.actors.policy.escalation import REPAIR, RESTART, after_replaced, on_degraded, recovered
from wasync.actors.policy.health import verdict
from wasync.actors.policy.intensity import RestartLog, check_restart
from wasync.actors.reply import Reply, answer, fail, tell_if_alive
from wasync.actors.slot import SessionSlot
from wasync.actors.startgate import StartGate
from wasync.actors.writer_protocol import AccountUpdate
from wasync.actors.watch import Child, Hold, SupervisionPolicy, Watch
from wasync.runtime.account import NO_REPAIR, AccountFacts, AccountPatch, AccountRecord, Repair
from wasync.runtime.alerts import Alerts
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus as S
from wasync.runtime.store.base import Fence
from wasync.runtime.ticker import Timers
from wasync.runtime.transport.session import NotConnected

log = logging.getLogger("wasync.supervisor")

TICK_S = 2.0

# BlockSupervisor waits on this forever (test-only: the systemd watchdog's tests).
_NEVER = threading.Event()

# make_child(account_id, phone, generation, supervisor, slot, fresh_pairing, fence) -> the started actor
ChildFactory = Callable[[str, Optional[str], int, pykka.ActorRef, SessionSlot, bool, Optional[Fence]], pykka.ActorRef]


class SupervisorActor(pykka.ThreadingActor):
    def __init__(self, make_child: ChildFactory, *, writer: pykka.ActorRef, board: Board, metrics: Metrics,
                 gate: StartGate, ticker: Timers, clock: Clock, alerts: Alerts,
                 to_leases: Callable[[object], None] = lambda message: None,
                 to_scheduler: Callable[[object], None] = lambda message: None,
                 policy: SupervisionPolicy = SupervisionPolicy(), rand: Optional[random.Random] = None):
        super().__init__()
        self.make_child = make_child
        self.to_leases = to_leases  # tells the lease coordinator (wired late: each needs the other)
        self.to_scheduler = to_scheduler
        self.writer, self.board, self.metrics, self.gate = writer, board, metrics, gate
        self.ticker, self.clock, self.alerts, self.policy = ticker, clock, alerts, policy
        self.rand = rand or random.Random()
        self.watches: dict[str, Watch] = {}
        self._generations = itertools.count(1)
        self.closing = False
        self._sessions_left: set[tuple[str, int]] = set()  # shutdown: children still stopping their session
        self._sessions_reply: Optional[Reply] = None
        self._tick = None

    def on_start(self) -> None:
        self._tick = self.ticker.every(self.actor_ref, sp.Tick(), TICK_S)

    def on_stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        for w in self.watches.values():
            self._stop_child(w)

    # --- messages ----------------------------------------------------------------------

    def on_receive(self, message: sp.SupervisorMsg):
        try:
            return self._handle(message)
        except Exception:
            # The supervisor must outlive its children's troubles.
            log.exception("[supervisor] unexpected error handling %s", type(message).__name__)
            self.metrics.actor_failures.labels(actor="supervisor").inc()
            return None

    def _handle(self, message: sp.SupervisorMsg):
        match message:
            case sp.Owned(record=record, fence=fence):
                self._owned(record, fence)
            case sp.Lost(account_id=account_id, reason=reason, graceful=graceful):
                self._lost(account_id, reason, graceful)
            case sp.Tick():
                self._liveness()
            case sp.StartDue():
                self._start_due(message)
            case sp.Facts(facts=facts, probe_seq=seq):
                self._facts(facts, seq)
            case sp.ChildFailed(account_id=a, generation=g, error=error):
                if (w := self._current(a, g)) is not None:
                    self._restart(w, error, "failure")
            case sp.ChildStopped(account_id=a, generation=g):
                self._child_stopped(a, g)
            case sp.SessionStopped(account_id=a, generation=g):
                self._session_stopped(a, g)
            case sp.SessionLoggedOut(account_id=a, generation=g, reason=reason):
                if (w := self._current(a, g)) is not None:
                    self._give_up(w, Hold.LOGGED_OUT, f"logged out ({reason})")
            case sp.SessionReplaced(account_id=a, generation=g):
                if (w := self._current(a, g)) is not None:
                    self._replaced(w)
            case sp.SessionBanned(account_id=a, generation=g):
                if (w := self._current(a, g)) is not None:
                    self._banned(w, message.reason, message.retry_after_ms)
            case sp.SessionPaired(account_id=a, generation=g, phone=phone):
                if (w := self._current(a, g)) is not None:
                    self._paired(w, phone)
            case sp.WriteRejected():
                self._write_rejected(message)
            case sp.RestartAccount(account_id=account_id, new_pairing=new_pairing):
                self._operator_restart(account_id, new_pairing)
            case sp.RequestPairingCode(account_id=a, phone=phone, reply=reply):
                self._to_child(a, PairPhone(phone, reply), reply)
            case sp.InjectFault(account_id=a, kind=kind, reply=reply):
                if self._to_child(a, Fault(kind), reply):
                    answer(reply)
            case sp.BlockSupervisor(reply=reply):
                log.warning("[supervisor] injected fault: the supervisor blocks for good")
                answer(reply)
                _NEVER.wait()
            case sp.ToAccount(account_id=a, message=order, on_absent=on_absent):
                w = self.watches.get(a)
                try:
                    if w is not None and w.child is not None and not self.closing:
                        w.child.ref.tell(order)
                        return None
                except pykka.ActorDeadError:
                    pass
                if on_absent is not None:
                    self.to_scheduler(on_absent)
            case sp.StopSessions(reply=reply):
                self._stop_sessions(reply)
            case sp.OpenSessions():
                return frozenset(a for a, _ in self._sessions_left)
            case sp.RunningAccounts():
                return tuple(sorted(a for a, w in self.watches.items() if w.child is not None))
        return None

    # --- the owned set -----------------------------------------------------------------

    def _owned(self, record: AccountRecord, fence: Fence) -> None:
        old = self.watches.get(record.account_id)
        if old is not None and old.owned:
            if fence != old.fence and old.child is not None:
                tell_if_alive(old.child.ref, NewFence(fence))
            old.fence = fence
            return
        # A new tenure starts from a new watch. Owned again while its old actor still stops,
        # that actor and an operator's re-pair request carry over; the last tenure's holds
        # went with their alerts when it was lost, and kept they would hold it silently.
        w = self.watches[record.account_id] = Watch(record.account_id, record.phone or (old and old.phone),
                                                    stored_status=record.status, fence=fence)
        if old is not None:
            w.stopping, w.token, w.fresh_pairing = old.stopping, old.token, old.fresh_pairing
        if record.repair.needed:
            self._adopt_repair(w, record)
            return
        self._schedule(w, 0.0)
        self._publish(w)

    def _adopt_repair(self, w: Watch, record: AccountRecord) -> None:
        """An account the store already marks for repair (an earlier run gave up on it):
        not started, and its incident counts as alerted already."""
        hold = Hold.LOGGED_OUT if record.status is S.LOGGED_OUT else Hold.NEEDS_REPAIR
        reason = record.repair.reason or "needs repair"
        w.hold, w.repair, w.status = hold, record.repair, S(hold.value)
        w.warning = f"{reason}: not started; pair it again (regenerate-qr)"
        self.alerts.raise_alert(w.account_id, reason, hold.value, notify=False)
        log.warning("[supervisor] accountId=%s needs repair (%s): not started", w.account_id, reason)
        self._publish(w)

    def _lost(self, account_id: str, reason: str, graceful: bool) -> None:
        w = self.watches.get(account_id)
        if w is None:
            self.to_leases(AccountStopped(account_id))  # nothing runs it here
            return
        w.owned, w.start_due = False, False
        w.token += 1
        if graceful or w.child is None:
            self._stop_child(w)
        else:
            # The lease is gone already: the socket goes now, not once the actor is through
            # with whatever it is busy with (a stop waits behind its inbox).
            child, w.child, w.probe_sent_s = w.child, None, None
            self._abandon(w, child)
        # Shown as disconnected while its actor stops, gone from the board after. Stored as
        # such only while the lease is still ours: otherwise the new owner's status stands.
        w.status, w.is_degraded, w.warning = S.DISCONNECTED, False, f"stopping here ({reason})"
        if not graceful:
            w.stored_status = S.DISCONNECTED
        self.alerts.clear(account_id)
        log.info("[supervisor] accountId=%s stopped (%s)", account_id, reason)
        self._publish(w)
        self._forget_if_gone(w)

    def _forget_if_gone(self, w: Watch) -> None:
        if not w.owned and w.child is None and not w.stopping:
            self.watches.pop(w.account_id, None)
            self.board.drop_account(w.account_id)
            self.to_leases(AccountStopped(w.account_id))

    # --- starts and stops ----------------------------------------------------------------

    def _schedule(self, w: Watch, delay_s: float, step: str = "gate") -> None:
        """Start `w` after `delay_s`: "gate" then takes a StartGate slot, "start" starts."""
        w.token += 1
        w.start_due = False
        self.ticker.later(self.actor_ref, sp.StartDue(w.account_id, w.token, step), delay_s)

    def _start_due(self, due: sp.StartDue) -> None:
        w = self.watches.get(due.account_id)
        if w is None or due.token != w.token or not w.owned or w.hold is not None or w.child or self.closing:
            return
        if due.step == "gate":
            # Reserved only now that the start is due: a slot taken minutes ahead for a
            # backoff would make every start after it wait too.
            self._schedule(w, self.gate.reserve_delay_s(), "start")
        elif w.stopping:
            w.start_due = True  # starts once the old actor has stopped its session
        else:
            self._start(w)

    def _start(self, w: Watch) -> None:
        w.start_due, w.probe_sent_s, w.rejection = False, None, None
        # Unique across the supervisor's life, not per watch: a zombie of an account that
        # was removed and added again can never pass for the new actor.
        w.generation = next(self._generations)
        w.status, w.is_degraded, w.warning = S.CONNECTING, False, None
        self._publish(w)  # first: the new actor's facts count from its first publish
        slot = SessionSlot(w.account_id)
        try:
            ref = self.make_child(w.account_id, w.phone, w.generation, self.actor_ref, slot, w.fresh_pairing, w.fence)
        except Exception as exc:
            log.exception("[supervisor] accountId=%s could not start: %s", w.account_id, exc)
            self._restart(w, f"could not start: {exc}", "start_failed")
            return
        w.child = Child(ref, slot, w.generation)
        self._publish(w)
        log.info("[supervisor] accountId=%s started", w.account_id)

    def _stop_child(self, w: Watch) -> None:
        """Ask the child to stop; it reports ChildStopped. Never waits."""
        child, w.child, w.probe_sent_s = w.child, None, None
        if child is None:
            return
        child.deadline_s = self.clock.monotonic_s() + self.policy.stop_child_s
        w.stopping[child.generation] = child
        try:
            child.ref.stop(block=False)
        except pykka.ActorDeadError:
            pass  # gone already; its ChildStopped is on the way (or the deadline passes)

    def _abandon(self, w: Watch, child: Child) -> None:
        """Let go of a child that cannot be stopped, or must not wait to be: kill its
        session on a thread of its own (which reports ChildStopped once that session is
        stopped), unregister it."""
        child.abandoned = True
        child.deadline_s = self.clock.monotonic_s() + self.policy.stop_child_s
        w.stopping[child.generation] = child
        ref, account_id, generation = self.actor_ref, w.account_id, child.generation
        child.slot.kill(on_stopped=lambda: tell_if_alive(ref, sp.ChildStopped(account_id, generation)))
        pykka.ActorRegistry.unregister(child.ref)
        try:
            child.ref.stop(block=False)  # if it ever wakes up, it stops at once
        except pykka.ActorDeadError:
            pass

    def _child_stopped(self, account_id: str, generation: int) -> None:
        w = self.watches.get(account_id)
        if w is None:
            return
        self._session_stopped(account_id, generation)
        if w.child is not None and w.child.generation == generation:
            # It stopped without being asked (a crash outside any handler).
            w.stopping[generation] = w.child
            w.child = None
            self._restart(w, "the actor stopped", "failure")
        if w.stopping.pop(generation, None) is not None:
            self._after_stop(w)

    def _after_stop(self, w: Watch) -> None:
        if not w.stopping and w.start_due and w.owned and w.hold is None and not self.closing:
            self._start(w)
        self._publish(w)
        self._forget_if_gone(w)

    # --- liveness ------------------------------------------------------------------------

    def _liveness(self) -> None:
        now = self.clock.monotonic_s()
        hung_s = self.policy.hung_after_ms / 1000
        for w in list(self.watches.values()):
            for child in list(w.stopping.values()):
                if now >= child.deadline_s:
                    self._overdue(w, child)
            if w.child is None or self.closing:
                continue  # (closing: children are stopping their sessions, not answering probes)
            if w.probe_sent_s is not None:
                # Counted in ticks, not compared in seconds: a probe sent a hair late in its
                # tick must not get a whole extra tick to answer.
                w.probe_ticks += 1
                if w.probe_ticks * TICK_S >= hung_s:
                    self._replace_hung(w, now - w.probe_sent_s)
                continue
            w.probe_seq += 1
            w.probe_sent_s, w.probe_ticks = now, 0
            try:
                w.child.ref.tell(Probe(w.probe_seq))
            except pykka.ActorDeadError:
                self._restart(w, "actor died", "failure")

    def _overdue(self, w: Watch, child: Child) -> None:
        if not child.abandoned:
            log.warning("[supervisor] accountId=%s did not stop within %.0f s: abandoning it", w.account_id,
                        self.policy.stop_child_s)
            self._abandon(w, child)
            return
        log.error("[supervisor] accountId=%s its old session still has not stopped; going on without it",
                  w.account_id)
        del w.stopping[child.generation]
        self._after_stop(w)

    def _replace_hung(self, w: Watch, waited_s: float) -> None:
        log.error("[supervisor] accountId=%s did not answer the liveness ask for %.1f s: replacing the actor",
                  w.account_id, waited_s)
        self.metrics.hung_actors.inc()
        child, w.child, w.probe_sent_s = w.child, None, None
        self._abandon(w, child)
        self._restart(w, f"actor hung (no answer for {waited_s:.0f} s)", "hung")

    # --- what children report ----------------------------------------------------------

    def _current(self, account_id: str, generation: int) -> Optional[Watch]:
        """The watch if the news comes from its running child (a replaced one's is stale)."""
        w = self.watches.get(account_id)
        if w is None or w.child is None or w.child.generation != generation:
            return None
        return w

    def _facts(self, facts: AccountFacts, probe_seq: Optional[int]) -> None:
        w = self._current(facts.account_id, facts.generation)
        if w is None:
            return
        if probe_seq is not None and probe_seq == w.probe_seq:
            w.probe_sent_s = None
        if facts.session_failure:
            self._restart(w, f"session failed: {facts.session_failure}", "session_failed")
            return
        now, threshold = self.clock.wall_ms(), self.policy.degraded_after_ms
        v = verdict(facts, now, threshold)
        if v.is_degraded and not w.is_degraded:
            # Shown at once; acted on when the next report (a probe later at most) still
            # says so: fresh facts confirm it, and operators see the state that was acted on.
            log.warning("[supervisor] accountId=%s degraded: %s", w.account_id, v.warning)
            w.status, w.is_degraded, w.warning = v.status, True, v.warning
            self._publish(w)
            return
        if v.is_degraded:
            if on_degraded(now, w.degraded_restart_ms, facts.last_real_message_ms, threshold) == REPAIR:
                self._give_up(w, Hold.NEEDS_REPAIR, f"still degraded after a restart: {v.warning}")
            else:
                log.warning("[supervisor] accountId=%s still degraded (%s): restarting the session",
                            w.account_id, v.warning)
                w.degraded_restart_ms = now
                self._restart(w, f"degraded: {v.reason}", "degraded")
            return
        if recovered(facts, v, now, threshold) and (w.repair.needed or w.account_id in self.alerts.open_incidents()):
            log.info("[supervisor] accountId=%s recovered: repair cleared, alert re-armed", w.account_id)
            self._clear_repair(w)
        if v.status is not w.status:
            log.info("[supervisor] accountId=%s status %s -> %s%s", w.account_id, w.status.value, v.status.value,
                     f" ({v.warning})" if v.warning and v.status is not S.PAIRING else "")
        w.status, w.is_degraded, w.warning = v.status, False, v.warning
        self._publish(w)

    def _replaced(self, w: Watch) -> None:
        """Another client took the socket. Never fought at once: the lease coordinator checks
        the lease (if it moved on, this is the handover and the account goes). If it stays
        ours, the first takeover gets one reconnect a lease later, a second one within the
        window holds the account for an operator (policy/escalation.after_replaced)."""
        self.to_leases(LeaseSessionReplaced(w.account_id))
        self.metrics.stream_replaced.inc()
        self._stop_child(w)
        now = int(self.clock.monotonic_s() * 1000)  # a window: a wall-clock step must not move it
        decision, w.replaced_ms = after_replaced(now, w.replaced_ms), now
        w.status, w.is_degraded = S.DISCONNECTED, False
        if decision == RESTART:
            wait_s = self.policy.replaced_retry_s
            log.warning("[lease] accountId=%s StreamReplaced: another client took this session; reconnecting once "
                        "in %.0f s if the lease stays here (a late connect of an instance that lost it stops by "
                        "then)", w.account_id, wait_s)
            w.warning = (f"another client took over this session (StreamReplaced): reconnecting once in "
                         f"{wait_s:.0f} s if the lease stays here")
            self._schedule(w, wait_s)
        else:
            log.warning("[lease] accountId=%s StreamReplaced again: another client uses this session; stopped, "
                        "not reconnecting", w.account_id)
            w.token += 1
            w.hold = Hold.STREAM_REPLACED
            w.warning = ("another client took over this session again (StreamReplaced): not reconnecting; "
                         "restart it with regenerate-qr once the other client is gone")
            # An operator must act (the Prometheus rule wants more than two in 15 minutes);
            # cleared once the account, restarted, has proven itself again.
            self.alerts.raise_alert(w.account_id, "another client uses this session (StreamReplaced twice)",
                                    Hold.STREAM_REPLACED.value, since_ms=self.clock.wall_ms())
        self._publish(w)

    def _banned(self, w: Watch, reason: str, retry_after_ms: int) -> None:
        wait_ms = int(retry_after_ms * (1 + 0.1 * self.rand.random()))  # spread a fleet's ban expiries
        log.warning("[supervisor] accountId=%s temporarily banned (%s): retrying in %.0f s", w.account_id, reason,
                    wait_ms / 1000)
        self._stop_child(w)
        self._schedule(w, wait_ms / 1000)
        w.status, w.is_degraded = S.DISCONNECTED, False
        w.warning = f"temporarily banned ({reason}); retrying in {wait_ms // 1000} s"
        self._publish(w)

    def _paired(self, w: Watch, phone: str) -> None:
        w.restarts, w.degraded_restart_ms, w.fresh_pairing, w.phone = RestartLog(), None, False, phone
        self._clear_repair(w)
        log.info("[supervisor] accountId=%s paired: repair cleared", w.account_id)

    def _write_rejected(self, rejected: sp.WriteRejected) -> None:
        if rejected.stale_fence is not None:  # the coordinator decides whether the lease is gone
            self.to_leases(FenceRejected(rejected.account_id, rejected.stale_fence.epoch))
        else:
            log.error("[supervisor] accountId=%s the store refused %d events for good (%s); they are quarantined",
                      rejected.account_id, rejected.rows, rejected.reason)
        w = self.watches.get(rejected.account_id)
        if w is not None and rejected.stale_fence is None:
            w.rejection = f"the store refused {rejected.rows} events (quarantined): {rejected.reason}"
            w.stored_status = None  # the refused write may have carried a status: write it again
            self._publish(w)

    # --- decisions -----------------------------------------------------------------------

    def _restart(self, w: Watch, why: str, kind: str) -> None:
        """Stop the child and start a new one after the backoff, unless the intensity limit
        says this account needs a human."""
        self._stop_child(w)
        now = self.clock.wall_ms()
        decision = check_restart(w.restarts, now, self.policy.max_restarts, self.policy.window_ms)
        if not decision.allowed:
            self._give_up(w, Hold.NEEDS_REPAIR, f"{decision.reason}; last: {why}")
            return
        w.restarts = decision.log
        attempt = len(decision.log.times_ms) - 1
        # A degraded session gets its fresh connection at once (only the start gate paces
        # it): the restart is a remedy, not a crash loop, and the escalation rule already
        # stops a second one. Crashes wait out the backoff.
        degraded = kind == "degraded"
        delay_ms = 0 if degraded else self.policy.backoff.delay_ms(attempt, self.rand)
        w.restart_total += 1
        self.metrics.restarts.labels(reason=kind).inc()
        log.warning("[supervisor] accountId=%s restart %d (%d in window) in %.1f s: %s", w.account_id,
                    w.restart_total, len(decision.log.times_ms), delay_ms / 1000, why)
        w.status, w.is_degraded = (S.DEGRADED if degraded else S.DISCONNECTED), degraded
        w.warning = f"restarting in {delay_ms / 1000:.0f} s ({why})"
        self._schedule(w, delay_ms / 1000)
        self._publish(w)

    def _give_up(self, w: Watch, hold: Hold, reason: str) -> None:
        self._stop_child(w)
        w.token += 1
        now = self.clock.wall_ms()
        w.hold, w.repair, w.status, w.is_degraded = hold, Repair(True, reason, now), S(hold.value), False
        w.warning = f"{reason}: restarts stopped; pair it again (regenerate-qr)"
        self.writer.tell(AccountUpdate(w.account_id, AccountPatch(status=w.status, repair=w.repair), w.fence))
        w.stored_status = w.status
        self.alerts.raise_alert(w.account_id, reason, hold.value, since_ms=now)
        self._publish(w)

    def _clear_repair(self, w: Watch) -> None:
        """The incident is over: re-arm the alert, clear the repair flags."""
        self.alerts.clear(w.account_id)
        if w.repair.needed:
            w.repair = NO_REPAIR
            self.writer.tell(AccountUpdate(w.account_id, AccountPatch(repair=NO_REPAIR), w.fence))
            self._publish(w)

    def _operator_restart(self, account_id: str, new_pairing: bool = False) -> None:
        """regenerate-qr / an operator's restart: a fresh start with a fresh restart budget.
        For an account that needs repair (or was logged out) that start is a new pairing:
        resuming the stored session is what did not work; `new_pairing` asks for one
        whatever the account's state (re-linking a device on purpose)."""
        w = self.watches.get(account_id)
        if w is None or not w.owned:
            log.info("[supervisor] accountId=%s restart asked, but it does not run here", account_id)
            return
        if new_pairing or w.hold in (Hold.NEEDS_REPAIR, Hold.LOGGED_OUT):
            w.fresh_pairing = True
            log.warning("[supervisor] accountId=%s re-pair requested: a new pairing starts", account_id)
        self._stop_child(w)
        w.hold, w.restarts, w.degraded_restart_ms, w.replaced_ms = None, RestartLog(), None, None
        w.status, w.is_degraded, w.warning = S.CONNECTING, False, None
        self._schedule(w, 0.0)
        self._publish(w)

    def _to_child(self, account_id: str, message, reply: Reply) -> bool:
        w = self.watches.get(account_id)
        try:
            if w is not None and w.child is not None:
                w.child.ref.tell(message)
                return True
        except pykka.ActorDeadError:
            pass
        fail(reply, NotConnected(f"account {account_id} is not running on this instance"))
        return False

    def _publish(self, w: Watch) -> None:
        """The decisions, to the board (readers) and, when the status moved, to the store."""
        decided = w.supervision(self.closing)
        if decided != w.published:
            w.published = decided
            self.board.publish_supervision(decided)
        if w.status is not w.stored_status:
            w.stored_status = w.status
            self.writer.tell(AccountUpdate(w.account_id, AccountPatch(status=w.status), w.fence))

    # --- shutdown --------------------------------------------------------------------------

    def _stop_sessions(self, reply: Reply) -> None:
        """Step one of a drain: no more starts; every child stops its session and hands
        its rows over, then reports SessionStopped. `reply` is set when all have."""
        self.closing = True
        for w in self.watches.values():
            w.token, w.start_due = w.token + 1, False
            if w.child is not None and tell_if_alive(w.child.ref, StopSession()):
                self._sessions_left.add((w.account_id, w.child.generation))
            # Children stopping already (a lease given up, a restart): their ChildStopped counts.
            self._sessions_left.update((w.account_id, generation) for generation in w.stopping)
            self._publish(w)  # nothing starts any more: the sweeper takes rows of accounts without an actor
        self._sessions_reply = reply
        self._answer_when_sessions_stopped()

    def _session_stopped(self, account_id: str, generation: int) -> None:
        self._sessions_left.discard((account_id, generation))
        self._answer_when_sessions_stopped()

    def _answer_when_sessions_stopped(self) -> None:
        if not self._sessions_left and self._sessions_reply is not None:
            answer(self._sessions_reply, True)
            self._sessions_reply = None
