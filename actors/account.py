"""AccountActor: one per owned account. Owns its Session and reads its Inbox (the spool
rows of this account, in order), turning raw events into store writes and health facts.

The transport's callback only appends to the spool and tells this actor to wake up; all
parsing happens here, on the actor's thread. Rows are handed to the writer in order and
leave the spool only after the store confirmed them, so a crash at any point replays
them (harmlessly: writes are idempotent). Exceptions never escape a handler: they are
counted and reported to the supervisor, which restarts the actor.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import replace
from typing import Optional

import pykka

from wasync.actors.messages import ChildFailed, Fault, HealthReport, Paired, PairPhone, Probe, SessionEnded, Wake
from wasync.actors.policy.health import HealthFacts, Verdict, protocol_streak, verdict
from wasync.actors.slot import SessionSlot
from wasync.actors.writer import IngestBatch, merge_account_fields
from wasync.runtime import model as m
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.spool import Spool, SpoolRow
from wasync.runtime.store.schema import SERVER_TIME, Increment, ms_to_dt
from wasync.runtime.transport.normalize import NormalizeError, normalize
from wasync.runtime.transport.session import NotConnected, SessionFactory

log = logging.getLogger("wasync.account")

DRAIN_ROWS = 200  # rows per wake-up: keeps the actor answering asks between bursts
UNDECRYPTABLE_WINDOW_MS = 10 * 60_000  # undecryptable messages count towards a burst this long

# Fault.kind "block" waits on this forever: a stand-in for a handler stuck in a call
# that never returns (tests of the supervisor's liveness check).
_NEVER = threading.Event()


class AccountActor(pykka.ThreadingActor):
    # A hung actor is abandoned, not joined: its thread must not keep the process alive.
    use_daemon_thread = True

    def __init__(self, account_id: str, phone: Optional[str], *, sessions: SessionFactory, spool: Spool,
                 writer: pykka.ActorRef, board: Board, metrics: Metrics, clock: Clock, dry_run_history: bool,
                 supervisor: Optional[pykka.ActorRef] = None, slot: Optional[SessionSlot] = None,
                 degraded_after_ms: int = 300_000, fresh_pairing: bool = False):
        super().__init__()
        self.account_id = account_id
        self.sessions, self.spool, self.writer = sessions, spool, writer
        self.board, self.metrics, self.clock = board, metrics, clock
        self.dry_run_history = dry_run_history
        self.supervisor = supervisor
        self.slot = slot or SessionSlot()
        self.degraded_after_ms = degraded_after_ms
        self.fresh_pairing = fresh_pairing  # forget the stored session and pair a new device
        self.cursor = 0  # last spool seq handed to the writer
        self.state = m.AccountState(account_id=account_id, status=m.AccountStatus.CONNECTING, phone=phone)
        self.qr_code: Optional[str] = None
        # health facts beyond AccountState (actors/policy/health.py)
        self.link = "connecting"  # connecting | connected | disconnected | pairing
        self.logged_out_reason: Optional[str] = None
        self.undecryptable: deque[int] = deque()  # wall ms of recent undecryptable messages
        self.streak: tuple[Optional[int], int, Optional[int]] = (None, 0, None)  # (start ms, beats, last beat ms)

    @property
    def session(self):
        return self.slot.current()

    # --- life cycle ------------------------------------------------------------------

    def on_start(self) -> None:
        self._publish()
        self.actor_ref.tell(Wake())  # replay what an earlier life left in the spool first
        ref, account_id, spool, metrics, clock = self.actor_ref, self.account_id, self.spool, self.metrics, self.clock

        def sink(kind: str, raw: bytes) -> None:
            # On the transport's thread: durable append, wake the actor, return. Nothing else.
            started = clock.monotonic_s()
            spool.append(account_id, kind, raw)
            metrics.event_to_spool.observe(clock.monotonic_s() - started)
            metrics.events.labels(kind=kind).inc()
            if ref.is_alive():
                ref.tell(Wake())

        try:
            phone = self.state.phone
            if self.fresh_pairing:
                log.warning("[realtime] accountId=%s re-pair: forgetting the stored session", self.account_id)
                self.sessions.forget(self.account_id)
                phone = None  # a phone would resume the old session
            session = self.sessions.open(self.account_id, phone, sink)
            self.slot.put(session)
            session.start()
        except Exception as exc:
            # pykka does not call on_failure for on_start: without this the account
            # would sit there looking "connecting" and be silently deaf.
            self._session_failed(f"session could not start: {type(exc).__name__}: {exc}")

    def _session_failed(self, error: str) -> None:
        log.error("[realtime] accountId=%s %s", self.account_id, error)
        self._stop_session()
        self.link = "disconnected"
        self.state = replace(self.state, status=m.AccountStatus.DISCONNECTED, connected=False)
        self.writer.tell(IngestBatch(self.account_id, account_fields={
            "status": m.AccountStatus.DISCONNECTED.value, "lastRealtimeError": error}))
        self.board.publish_realtime(self.account_id, lastRealtimeError=error)
        self._publish()
        self._report(error)

    def on_stop(self) -> None:
        self._stop_session()

    def _stop_session(self) -> None:
        session = self.slot.take()
        if session is not None:
            try:
                session.stop()
            except Exception:
                log.exception("[realtime] accountId=%s session did not stop cleanly", self.account_id)

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        self.metrics.actor_failures.labels(actor="account").inc()
        self._report(f"{exception_type.__name__}: {exception_value}")

    # --- messages ----------------------------------------------------------------------

    def on_receive(self, message):
        if self.slot.killed:
            # Replaced while stuck in a handler: the new actor owns the account now.
            self.actor_ref.stop(block=False)
            return None
        if isinstance(message, PairPhone):
            # An ask: a session error goes back to the asker (pykka hands it over) and is
            # no reason to restart the account.
            session = self.session
            if session is None:
                raise NotConnected(f"account {self.account_id} has no session")
            return session.pair_phone(message.phone)
        try:
            if isinstance(message, Wake):
                self._drain()
            elif isinstance(message, Probe):
                self._answer_probe(message)
            elif message == "stop_session":
                self._stop_session()  # shutdown: no new events, but keep draining the spool
            elif message == "state":
                return self.state
            elif message == "qr":
                return self.qr_code
            elif message == "session":
                return self.session
            elif isinstance(message, Fault):
                self._fault(message)
        except Exception as exc:
            log.exception("[realtime] accountId=%s ingest failed", self.account_id)
            self.metrics.actor_failures.labels(actor="account").inc()
            self._report(f"{type(exc).__name__}: {exc}")

    def _fault(self, fault: Fault) -> None:
        log.warning("[supervisor] accountId=%s injected fault: %s", self.account_id, fault.kind)
        if fault.kind == "raise":
            raise RuntimeError("injected fault")
        if fault.kind == "block":
            _NEVER.wait()

    def _report(self, error: str) -> None:
        self._tell_supervisor(ChildFailed(self.account_id, error, self.actor_urn))

    def _tell_supervisor(self, message) -> None:
        if self.supervisor is not None and self.supervisor.is_alive():
            try:
                self.supervisor.tell(message)
            except pykka.ActorDeadError:
                pass

    # --- health ----------------------------------------------------------------------

    def _facts(self) -> HealthFacts:
        now = self.clock.wall_ms()
        while self.undecryptable and self.undecryptable[0] <= now - UNDECRYPTABLE_WINDOW_MS:
            self.undecryptable.popleft()
        st = self.state
        return HealthFacts(
            now_ms=now, connected=self.link == "connected", connecting=self.link == "connecting",
            pairing=self.link == "pairing", logged_out_reason=self.logged_out_reason,
            last_real_ms=st.last_real_message_ms, last_protocol_ms=st.last_protocol_message_ms,
            connected_since_ms=st.connected_since_ms, keepalive_timeouts=st.keepalive_timeouts,
            protocol_streak_start_ms=self.streak[0], protocol_streak_count=self.streak[1],
            undecryptable_recent=len(self.undecryptable), degraded_after_ms=self.degraded_after_ms)

    def _evaluate(self, batch: Optional[IngestBatch] = None) -> tuple[HealthFacts, Verdict]:
        """Judge the account now; a changed status goes to the board and the store."""
        facts = self._facts()
        v = verdict(facts)
        previous = self.state.status
        self.state = replace(self.state, status=v.status, is_degraded=v.is_degraded, warning=v.warning,
                             connected=facts.connected, undecryptable_recent=facts.undecryptable_recent)
        if v.status is not previous:
            log.info("[supervisor] accountId=%s status %s -> %s%s", self.account_id, previous.value,
                     v.status.value, f" ({v.warning})" if v.warning and v.status is not m.AccountStatus.PAIRING else "")
            if batch is not None:
                batch.account_fields["status"] = v.status.value
            else:
                self.writer.tell(IngestBatch(self.account_id, account_fields={"status": v.status.value}))
        return facts, v

    def _answer_probe(self, probe: Probe) -> None:
        facts, v = self._evaluate()
        self._publish()
        session = self.session
        failure = session.failure if session is not None else None
        self._tell_supervisor(HealthReport(self.account_id, self.actor_urn, probe.seq, facts, v,
                                           None if failure is None else f"{type(failure).__name__}: {failure}"))

    def _drain(self) -> None:
        rows = self.spool.pending(self.account_id, after_seq=self.cursor, limit=DRAIN_ROWS)
        if not rows:
            return
        batch = IngestBatch(self.account_id)
        real = protocol = 0
        for row in rows:
            self.cursor = row.seq
            try:
                events = normalize(self.account_id, row.kind, row.raw)
            except NormalizeError as exc:
                self.metrics.normalize_errors.inc()
                self.metrics.quarantined.inc()
                self.spool.quarantine([row.seq], str(exc))
                log.warning("[realtime] accountId=%s quarantined seq=%d: %s", self.account_id, row.seq, exc)
                continue
            batch.seqs.append(row.seq)
            for event in events:
                r, p = self._apply(event, row, batch)
                real, protocol = real + r, protocol + p
        if real or protocol:
            log.info("[realtime] accountId=%s real=%d protocol=%d", self.account_id, real, protocol)
        self._evaluate(batch)
        self.writer.tell(batch)
        self._publish()
        if len(rows) == DRAIN_ROWS:
            self.actor_ref.tell(Wake())

    def _apply(self, event, row: SpoolRow, batch: IngestBatch) -> tuple[int, int]:
        """Fold one normalized event into the batch and the health facts; returns
        (real, protocol) message counts."""
        now = self.clock.wall_ms()
        if isinstance(event, m.Message):
            batch.messages.append(event)
            batch.received_ms.append(row.received_at_ms)
            if event.push_name and not event.is_group and event.direction is m.Direction.INBOUND:
                batch.threads.append(m.ThreadUpdate(self.account_id, event.client_jid, display_name=event.push_name))
            self.metrics.messages_ingested.labels(source=event.sync_source.value, type=event.message_type.value).inc()
            self.metrics.message_class.labels(**{"class": "real"}).inc()
            self.state = replace(self.state, last_real_message_ms=now, real_messages=self.state.real_messages + 1)
            self.streak = (None, 0, None)
            batch.account_fields.update(lastRealtimeIngestAt=SERVER_TIME,
                                        lastRealtimeMessageAt=ms_to_dt(event.ts_client_ms))
            self.board.publish_realtime(self.account_id, lastRealtimeIngestAt=now,
                                        lastRealtimeMessageAt=event.ts_client_ms)
            return 1, 0
        if isinstance(event, m.ProtocolMessage):
            self.metrics.message_class.labels(**{"class": "protocol"}).inc()
            self.streak = protocol_streak(*self.streak, self.state.last_protocol_message_ms, now, self.degraded_after_ms)
            self.state = replace(self.state, last_protocol_message_ms=now,
                                 protocol_messages=self.state.protocol_messages + 1)
            return 0, 1
        if isinstance(event, m.HistoryBatch):
            if event.sync_type is not m.HistorySyncType.ON_DEMAND:
                # The phone pushing its history proves the session is not deaf (and a big
                # initial sync comes with minutes of protocol notices). Answers to our own
                # requests prove nothing about live delivery.
                self.streak = (None, 0, None)
            self._history(event, batch)
        elif isinstance(event, m.Receipt):
            self.metrics.receipts.labels(kind=event.kind.value).inc()
            if event.status is not None:
                batch.receipts.append(event)
        elif isinstance(event, m.MessageEdit):
            batch.edits.append(event)
        elif isinstance(event, m.MessageRevoke):
            batch.revokes.append(event)
        elif isinstance(event, m.Ignored):
            self.metrics.ignored.labels(reason=event.reason.split(":")[0]).inc()
        else:
            self._session_event(event, batch)
        return 0, 0

    def _history(self, event: m.HistoryBatch, batch: IngestBatch) -> None:
        total = len(event.messages) + event.skipped
        result = {"saved": 0 if self.dry_run_history else len(event.messages), "skipped": event.skipped,
                  "errors": 0, "total": total, "dryRun": self.dry_run_history}
        if not self.dry_run_history:
            batch.messages.extend(event.messages)
            batch.threads.extend(event.threads)
            for msg in event.messages:
                self.metrics.messages_ingested.labels(source=msg.sync_source.value, type=msg.message_type.value).inc()
        # Merged, not update()d: several chunks drained in one wake-up each count.
        self.state = replace(self.state, last_history_sync_ms=self.clock.wall_ms())
        merge_account_fields(batch.account_fields, dict(
            lastHistorySyncAt=SERVER_TIME, historySyncCount=Increment(1), lastHistorySyncResult=result))
        log.info("[history-sync] accountId=%s type=%s chunk=%d messages=%d skipped=%d dryRun=%s",
                 self.account_id, event.sync_type.value, event.chunk_order, len(event.messages), event.skipped,
                 self.dry_run_history)

    def _session_event(self, event, batch: IngestBatch) -> None:
        """Session events move the health facts; the status follows from the verdict."""
        now = self.clock.wall_ms()
        if isinstance(event, m.Connected):
            self.link = "connected"
            self.streak = (None, 0, None)
            self.state = replace(self.state, connected_since_ms=now, keepalive_timeouts=0)
        elif isinstance(event, m.Disconnected):
            if self.link != "pairing":
                self.link = "disconnected"
        elif isinstance(event, m.StreamReplaced):
            self.link = "disconnected"
            log.warning("[lease] accountId=%s StreamReplaced: another client owns this session", self.account_id)
            self._tell_supervisor(SessionEnded(self.account_id, self.actor_urn, "stream_replaced",
                                               "another client took over this session"))
        elif isinstance(event, m.LoggedOut):
            self.link = "disconnected"
            self.logged_out_reason = event.reason
            self.state = replace(self.state, needs_repair=True, repair_reason=f"logged out ({event.reason})",
                                 repair_requested_ms=now)
            batch.account_fields.update(needsRepair=True, repairReason=f"logged out ({event.reason})",
                                        repairRequestedAt=SERVER_TIME)
            self._tell_supervisor(SessionEnded(self.account_id, self.actor_urn, "logged_out", event.reason))
        elif isinstance(event, m.TemporaryBan):
            self.link = "disconnected"
            self._tell_supervisor(SessionEnded(self.account_id, self.actor_urn, "banned", event.code or "temporary ban",
                                               retry_after_ms=max(1, event.expires_in_s) * 1000))
        elif isinstance(event, m.KeepAliveTimeout):
            self.state = replace(self.state, keepalive_timeouts=max(event.error_count, self.state.keepalive_timeouts + 1))
        elif isinstance(event, m.KeepAliveRestored):
            self.state = replace(self.state, keepalive_timeouts=0)
        elif isinstance(event, m.UndecryptableMessage):
            self.undecryptable.append(now)
        elif isinstance(event, m.QrCode):
            self.link = "pairing"
            self.qr_code = event.codes[0] if event.codes else None
            self.board.publish_qr(self.account_id, self.qr_code)
        elif isinstance(event, m.PairSuccess):
            phone = event.jid.split("@")[0].split(":")[0]
            self.qr_code = None
            self.board.publish_qr(self.account_id, None)
            if self.link == "pairing":
                self.link = "connecting"
            self.logged_out_reason = None
            self.state = replace(self.state, jid=event.jid, phone=phone, needs_repair=False, repair_reason=None,
                                 repair_requested_ms=None)
            batch.account_fields.update(jid=event.jid, phone=phone, needsRepair=False, repairReason=None,
                                        repairRequestedAt=None)
            self._tell_supervisor(Paired(self.account_id, self.actor_urn))
        elif isinstance(event, m.ConnectFailure):
            batch.account_fields.update(lastRealtimeError=f"connect failure: {event.reason} {event.message}".strip())

    def _publish(self) -> None:
        self.board.publish_account(self.state)
