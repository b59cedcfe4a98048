"""SupervisorActor: one AccountActor per wanted account, watched, restarted, or handed to
a human (DESIGN.md "Supervision").

pykka has no links or monitors, so the supervisor builds them:
- failure hook: a child that fails tells it `ChildFailed` (from a handler or on_failure);
- liveness ask: every tick each child gets a `Probe` and must answer with a
  `HealthReport` within WASYNC_HUNG_AFTER_MS; a child that does not is stuck in a
  handler. It cannot be stopped (its thread is busy), so it is abandoned: its session
  is killed through the shared SessionSlot, it leaves the registry, and a new actor
  replays the account's spool rows (nothing acknowledged is lost: rows leave the spool
  only once stored).

What it does with what it hears is decided by the pure policies in actors/policy/:
restarts wait an exponential backoff and count against an intensity limit (beyond it:
`needs_repair` + alert); a degraded session is restarted once, and if the restart did not
heal it the account needs a human; a logout needs a human at once; a temporary ban is
waited out; StreamReplaced stops the account (another client owns the session; never
fight it). Every start, first or restart, takes a slot from the shared StartGate so a
fleet never connects at once.

The supervisor owns one timer (the earliest scheduled start) instead of a thread per
pending restart: 500 accounts waiting for their slot cost one heap, not 500 threads.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import pykka

from wasync.actors.messages import ChildFailed, HealthReport, Paired, Probe, SessionEnded
from wasync.actors.slot import SessionSlot
from wasync.runtime.backoff import Backoff
from wasync.actors.policy.escalation import REPAIR, on_degraded, recovered
from wasync.actors.policy.intensity import MAX_RESTARTS, WINDOW_MS, RestartLog, check_restart
from wasync.actors.timers import tell_later
from wasync.runtime.alerts import Alerts
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus
from wasync.actors.startgate import StartGate
from wasync.runtime.store.schema import SERVER_TIME

log = logging.getLogger("wasync.supervisor")

STOP_CHILD_S = 15.0  # a child that does not stop within this is abandoned like a hung one

# make_child(account_id, phone, supervisor_ref, slot, fresh_pairing) -> the started AccountActor's ref
ChildFactory = Callable[[str, Optional[str], pykka.ActorRef, SessionSlot, bool], pykka.ActorRef]


@dataclass(frozen=True)
class SupervisionPolicy:
    backoff: Backoff = Backoff()
    max_restarts: int = MAX_RESTARTS
    window_ms: int = WINDOW_MS
    hung_after_ms: int = 30_000
    degraded_after_ms: int = 300_000


@dataclass
class _Child:
    ref: pykka.ActorRef
    slot: SessionSlot


@dataclass
class _Watch:
    """What the supervisor knows about one account."""

    account_id: str
    phone: Optional[str] = None
    child: Optional[_Child] = None
    restarts: RestartLog = RestartLog()
    restart_total: int = 0
    probe_seq: int = 0
    probe_sent_s: Optional[float] = None  # monotonic time of the unanswered probe
    degraded_restart_ms: Optional[int] = None
    # Why no child runs and none will be started until an operator acts:
    # "needs_repair" | "logged_out" | "stream_replaced"; None = supervised normally.
    held: Optional[str] = None
    schedule_token: int = 0  # bumps invalidate scheduled starts
    fresh_pairing: bool = False  # starts forget the stored session until a pairing succeeds
    scheduled: bool = False
    repair_flagged: bool = False  # the store says needsRepair (we wrote it or found it)
    overlay: dict = field(default_factory=dict)


class _Due:
    pass


@dataclass(frozen=True)
class Tick:
    """The daemon's periodic tick: the wanted accounts (read by the ticker thread, so a
    slow store never stalls the supervisor; None when the read failed) and the liveness
    round."""

    accounts: Optional[list] = None


class SupervisorActor(pykka.ThreadingActor):
    def __init__(self, make_child: ChildFactory, list_accounts: Callable[[], list[dict]], board: Board,
                 metrics: Metrics, gate: StartGate, *, clock: Optional[Clock] = None, alerts=None,
                 write_fields: Optional[Callable[[str, dict], None]] = None,
                 policy: SupervisionPolicy = SupervisionPolicy(), rand: Optional[random.Random] = None):
        super().__init__()
        self.make_child = make_child
        self.list_accounts = list_accounts
        self.board, self.metrics, self.gate = board, metrics, gate
        self.clock = clock or Clock()
        # Without a webhook an Alerts still keeps the incidents and logs the [supervisor] line.
        self.alerts = alerts or Alerts("-", None, clock=self.clock)
        self.write_fields = write_fields or (lambda account_id, fields: None)
        self.policy = policy
        self.rand = rand or random.Random()
        self.watches: dict[str, _Watch] = {}
        self._heap: list[tuple[float, int, str, int, str]] = []  # (due_s, n, account, token, step)
        self._n = itertools.count()
        self._timer: Optional[threading.Timer] = None
        self._timer_due: Optional[float] = None
        self.closing = False

    # --- messages ----------------------------------------------------------------------

    def on_receive(self, message):
        try:
            if isinstance(message, Tick):
                if message.accounts is not None:
                    self._reconcile(message.accounts)
                self._liveness()
            elif message == "reconcile":
                self._reconcile(self.list_accounts())
            elif isinstance(message, _Due):
                self._timer, self._timer_due = None, None
                self._run_due()
            elif isinstance(message, HealthReport):
                self._health(message)
            elif isinstance(message, ChildFailed):
                self._child_failed(message)
            elif isinstance(message, SessionEnded):
                self._session_ended(message)
            elif isinstance(message, Paired):
                self._paired(message)
            elif message == "children":
                return sorted(a for a, w in self.watches.items() if w.child is not None)
            elif isinstance(message, tuple) and message[0] == "child":
                w = self.watches.get(message[1])
                return w.child.ref if w is not None and w.child is not None else None
            elif isinstance(message, tuple) and message[0] == "restart":
                self._operator_restart(message[1])
            elif message == "stop_sessions":
                self._stop_sessions()
            elif message == "stop_all":
                self._stop_all()
        except Exception:
            # The supervisor must outlive its children's troubles.
            log.exception("[supervisor] unexpected error")
            self.metrics.actor_failures.labels(actor="supervisor").inc()

    def on_stop(self) -> None:
        self._stop_all()

    # --- the wanted set ----------------------------------------------------------------

    def _reconcile(self, accounts: list[dict]) -> None:
        if self.closing:
            return
        wanted = {a["accountId"]: a for a in accounts if a.get("enabled", True)}
        for account_id in list(self.watches):
            if account_id not in wanted:
                self._forget(account_id)
        for account_id, doc in wanted.items():
            w = self.watches.get(account_id)
            if w is None:
                w = self.watches[account_id] = _Watch(account_id, doc.get("phone"))
                if doc.get("needsRepair"):
                    self._adopt_repair(w, doc)
                    continue
            w.phone = doc.get("phone") or w.phone
            if w.child is None and w.held is None and not w.scheduled:
                self._schedule(w, 0.0)

    def _adopt_repair(self, w: _Watch, doc: dict) -> None:
        """An account the store already marks for repair (an earlier run gave up on it):
        not started, and its incident counts as alerted already."""
        status = AccountStatus.LOGGED_OUT if doc.get("status") == "logged_out" else AccountStatus.NEEDS_REPAIR
        reason = doc.get("repairReason") or "needs repair"
        w.held, w.repair_flagged = status.value, True
        self.alerts.raise_alert(w.account_id, reason, status.value, notify=False)
        self._overlay(w, status=status, needs_repair=True, repair_reason=reason,
                      warning=f"{reason}: not started; pair it again (regenerate-qr)")
        log.warning("[supervisor] accountId=%s needs repair (%s): not started", w.account_id, reason)

    def _forget(self, account_id: str) -> None:
        w = self.watches.pop(account_id)
        w.schedule_token += 1
        self._stop_child(w)
        self.board.drop_account(account_id)
        self.alerts.clear(account_id)
        log.info("[supervisor] accountId=%s stopped (removed)", account_id)

    # --- scheduled starts (backoff, bans, storm control) ---------------------------------

    def _schedule(self, w: _Watch, delay_s: float, step: str = "due") -> None:
        """Start `w` after `delay_s`; "due" then takes a StartGate slot, "start" starts."""
        w.scheduled = True
        due = self.clock.monotonic_s() + delay_s
        heapq.heappush(self._heap, (due, next(self._n), w.account_id, w.schedule_token, step))
        self._arm()

    def _arm(self) -> None:
        if not self._heap or self.closing:
            return
        due = self._heap[0][0]
        if self._timer is not None and self._timer_due is not None and self._timer_due <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = tell_later(self.actor_ref, _Due(), max(0.0, due - self.clock.monotonic_s()))

    def _run_due(self) -> None:
        now = self.clock.monotonic_s()
        while self._heap and self._heap[0][0] <= now + 0.001 and not self.closing:
            _, _, account_id, token, step = heapq.heappop(self._heap)
            w = self.watches.get(account_id)
            if w is None or token != w.schedule_token:
                continue  # removed, or rescheduled since
            if w.held is not None or w.child is not None:
                w.scheduled = False
                continue
            if step == "due":
                self._schedule(w, self.gate.reserve_delay_s(), "start")
            else:
                w.scheduled = False
                self._start(w)
        self._arm()

    def _start(self, w: _Watch) -> None:
        slot = SessionSlot()
        try:
            ref = self.make_child(w.account_id, w.phone, self.actor_ref, slot, w.fresh_pairing)
        except Exception as exc:
            log.exception("[supervisor] accountId=%s could not start: %s", w.account_id, exc)
            self._restart(w, f"could not start: {exc}", "start_failed")
            return
        w.child = _Child(ref, slot)
        w.probe_sent_s = None
        self._overlay(w, drop=("status", "warning", "is_degraded", "connected"))  # the child's own state shows now
        log.info("[supervisor] accountId=%s started", w.account_id)

    # --- liveness ------------------------------------------------------------------------

    def _liveness(self) -> None:
        if self.closing:
            return
        now = self.clock.monotonic_s()
        hung_s = self.policy.hung_after_ms / 1000
        for w in list(self.watches.values()):
            if w.child is None:
                continue
            if w.probe_sent_s is not None:
                if now - w.probe_sent_s >= hung_s:
                    self._replace_hung(w, now - w.probe_sent_s)
                continue
            w.probe_seq += 1
            w.probe_sent_s = now
            try:
                w.child.ref.tell(Probe(w.probe_seq))
            except pykka.ActorDeadError:
                w.probe_sent_s = None
                self._restart(w, "actor died", "failure")

    def _replace_hung(self, w: _Watch, waited_s: float) -> None:
        log.error("[supervisor] accountId=%s did not answer the liveness ask for %.1f s: replacing the actor",
                  w.account_id, waited_s)
        self.metrics.hung_actors.inc()
        self._abandon(w)
        self._restart(w, f"actor hung (no answer for {waited_s:.0f} s)", "hung")

    def _abandon(self, w: _Watch) -> None:
        """Let go of a child that cannot be stopped: kill its session, unregister it."""
        child, w.child, w.probe_sent_s = w.child, None, None
        if child is None:
            return
        self._overlay(w, connected=False)
        try:
            child.slot.kill()
        except Exception:
            log.exception("[supervisor] accountId=%s session of the abandoned actor did not stop", w.account_id)
        pykka.ActorRegistry.unregister(child.ref)
        try:
            child.ref.stop(block=False)  # if it ever wakes up, it stops at once
        except pykka.ActorDeadError:
            pass

    # --- what children report ----------------------------------------------------------

    def _current(self, account_id: str, urn: Optional[str]) -> Optional[_Watch]:
        """The watch if the report comes from its current child (old actors' news is stale)."""
        w = self.watches.get(account_id)
        if w is None or w.child is None:
            return None
        if urn is not None and urn != w.child.ref.actor_urn:
            return None
        return w

    def _health(self, report: HealthReport) -> None:
        w = self._current(report.account_id, report.urn)
        if w is None or report.seq != w.probe_seq:
            return
        w.probe_sent_s = None
        if report.session_failure:
            self._restart(w, f"session failed: {report.session_failure}", "session_failed")
            return
        v, facts = report.verdict, report.facts
        if v.is_degraded:
            now = self.clock.wall_ms()
            action = on_degraded(now, w.degraded_restart_ms, facts.last_real_ms, self.policy.degraded_after_ms)
            if action == REPAIR:
                self._give_up(w, AccountStatus.NEEDS_REPAIR, f"still degraded after a restart: {v.warning}")
            else:
                log.warning("[supervisor] accountId=%s degraded (%s): restarting the session", w.account_id,
                            v.warning)
                w.degraded_restart_ms = now
                self._restart(w, f"degraded: {v.reason}", "degraded")
        elif recovered(facts, v):
            self._recovered(w)

    def _recovered(self, w: _Watch) -> None:
        if w.account_id in self.alerts.open_incidents() or w.repair_flagged:
            log.info("[supervisor] accountId=%s recovered: repair cleared, alert re-armed", w.account_id)
            self._clear_repair(w, write_store=w.repair_flagged)

    def _clear_repair(self, w: _Watch, write_store: bool) -> None:
        """The incident is over: re-arm the alert, drop the repair flags (board, store)."""
        self.alerts.clear(w.account_id)
        w.repair_flagged = False
        if write_store:
            self.write_fields(w.account_id, {"needsRepair": False, "repairReason": None, "repairRequestedAt": None})
        self._overlay(w, needs_repair=False, repair_reason=None, repair_requested_ms=None)

    def _child_failed(self, failure: ChildFailed) -> None:
        w = self._current(failure.account_id, failure.urn)
        if w is None:
            return
        self._restart(w, failure.error, "failure")

    def _session_ended(self, ended: SessionEnded) -> None:
        w = self._current(ended.account_id, ended.urn)
        if w is None:
            return
        if ended.kind == "logged_out":
            self._give_up(w, AccountStatus.LOGGED_OUT, f"logged out ({ended.reason})")
        elif ended.kind == "stream_replaced":
            self.metrics.stream_replaced.inc()
            log.warning("[lease] accountId=%s StreamReplaced: another client owns this session; stopped, "
                        "not reconnecting", w.account_id)
            self._stop_child(w)
            w.held = "stream_replaced"
            self._overlay(w, status=AccountStatus.DISCONNECTED, is_degraded=False,
                          warning="another client took over this session (StreamReplaced): not reconnecting; "
                                  "restart it with regenerate-qr once the other client is gone")
        elif ended.kind == "banned":
            wait_ms = ended.retry_after_ms or 60_000
            wait_ms = int(wait_ms * (1 + 0.1 * self.rand.random()))  # spread a fleet's ban expiries
            log.warning("[supervisor] accountId=%s temporarily banned (%s): retrying in %.0f s", w.account_id,
                        ended.reason, wait_ms / 1000)
            self._stop_child(w)
            w.schedule_token += 1
            self._schedule(w, wait_ms / 1000)
            self._overlay(w, status=AccountStatus.DISCONNECTED, is_degraded=False,
                          warning=f"temporarily banned ({ended.reason}); retrying in {wait_ms // 1000} s")

    def _paired(self, paired: Paired) -> None:
        w = self._current(paired.account_id, paired.urn)
        if w is None:
            return
        w.restarts, w.degraded_restart_ms, w.fresh_pairing = RestartLog(), None, False
        self._clear_repair(w, write_store=False)  # the actor wrote needsRepair false with the pairing
        log.info("[supervisor] accountId=%s paired: repair cleared", w.account_id)

    # --- actions ---------------------------------------------------------------------------

    def _restart(self, w: _Watch, why: str, kind: str) -> None:
        """Stop the child and start a new one after the backoff, unless the intensity limit
        says this account needs a human."""
        self._stop_child(w)
        now = self.clock.wall_ms()
        decision = check_restart(w.restarts, now, self.policy.max_restarts, self.policy.window_ms)
        if not decision.allowed:
            self._give_up(w, AccountStatus.NEEDS_REPAIR, f"{decision.reason}; last: {why}")
            return
        w.restarts = decision.log
        attempt = len(decision.log.times_ms) - 1
        # A degraded session gets its fresh connection at once (only the start gate paces
        # it): the restart is a remedy, not a crash loop, and the escalation rule already
        # stops a second one. Crashes wait out the backoff.
        delay_ms = 0 if kind == "degraded" else self.policy.backoff.delay_ms(attempt, self.rand)
        w.restart_total += 1
        w.schedule_token += 1
        self.metrics.restarts.labels(reason=kind).inc()
        log.warning("[supervisor] accountId=%s restart %d (%d in window) in %.1f s: %s", w.account_id,
                    w.restart_total, len(decision.log.times_ms), delay_ms / 1000, why)
        degraded = kind == "degraded"
        self._overlay(w, status=AccountStatus.DEGRADED if degraded else AccountStatus.DISCONNECTED,
                      is_degraded=degraded, warning=f"restarting in {delay_ms / 1000:.0f} s ({why})")
        self._schedule(w, delay_ms / 1000)

    def _give_up(self, w: _Watch, status: AccountStatus, reason: str) -> None:
        self._stop_child(w)
        w.schedule_token += 1
        w.scheduled = False
        w.held = status.value
        w.repair_flagged = True
        now = self.clock.wall_ms()
        self._overlay(w, status=status, is_degraded=False, needs_repair=True, repair_reason=reason,
                      repair_requested_ms=now, warning=f"{reason}: restarts stopped; pair it again (regenerate-qr)")
        self.write_fields(w.account_id, {"status": status.value, "needsRepair": True, "repairReason": reason,
                                         "repairRequestedAt": SERVER_TIME})
        self.alerts.raise_alert(w.account_id, reason, status.value, since_ms=now)

    def _operator_restart(self, account_id: str) -> None:
        """regenerate-qr / an operator's restart: a fresh start with a fresh restart budget.
        For an account that needs repair (or was logged out) that start is a new pairing:
        resuming the stored session is what did not work."""
        w = self.watches.get(account_id)
        if w is None:
            self._reconcile(self.list_accounts())
            w = self.watches.get(account_id)
            if w is None or w.held is None:
                return
        if w.held in (AccountStatus.NEEDS_REPAIR.value, AccountStatus.LOGGED_OUT.value):
            w.fresh_pairing = True
            log.warning("[supervisor] accountId=%s re-pair requested: a new pairing starts", account_id)
        self._stop_child(w)
        w.held, w.restarts, w.degraded_restart_ms = None, RestartLog(), None
        w.schedule_token += 1
        self._overlay(w, status=AccountStatus.CONNECTING, warning=None)
        self._schedule(w, 0.0)

    def _stop_child(self, w: _Watch) -> None:
        child = w.child
        if child is None:
            return
        w.child, w.probe_sent_s = None, None
        self._overlay(w, connected=False)  # its last published state may still say connected
        try:
            child.ref.stop(timeout=STOP_CHILD_S)
        except pykka.Timeout:
            log.warning("[supervisor] accountId=%s did not stop within %.0f s: abandoning it", w.account_id,
                        STOP_CHILD_S)
            w.child = child
            self._abandon(w)
        except pykka.ActorDeadError:
            pass

    def _overlay(self, w: _Watch, drop: tuple[str, ...] = (), **fields) -> None:
        """What the board shows on top of the child's own state (or instead of it, while
        no child runs): AccountState fields; `drop` hands fields back to the child."""
        for name in drop:
            w.overlay.pop(name, None)
        w.overlay.update(fields)
        w.overlay["restarts"] = w.restart_total
        self.board.publish_supervision(w.account_id, dict(w.overlay))

    # --- shutdown --------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, None
        self._heap.clear()

    def _stop_sessions(self) -> None:
        """Shutdown, step one: no new events; the actors keep draining the spool."""
        self.closing = True
        self._cancel_timer()
        for w in self.watches.values():
            if w.child is not None:
                try:
                    w.child.ref.tell("stop_session")
                except pykka.ActorDeadError:
                    pass

    def _stop_all(self) -> None:
        self.closing = True
        self._cancel_timer()
        for w in self.watches.values():
            self._stop_child(w)
