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
from dataclasses import dataclass, replace
from typing import Optional

import pykka

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


@dataclass(frozen=True)
class Wake:
    pass


@dataclass(frozen=True)
class PairPhone:
    """Ask for a pairing code for `phone` (answered with the code)."""

    phone: str


@dataclass(frozen=True)
class ChildFailed:
    """Told to the supervisor when an account actor could not go on."""

    account_id: str
    error: str


class AccountActor(pykka.ThreadingActor):
    def __init__(self, account_id: str, phone: Optional[str], *, sessions: SessionFactory, spool: Spool,
                 writer: pykka.ActorRef, board: Board, metrics: Metrics, clock: Clock, dry_run_history: bool,
                 supervisor: Optional[pykka.ActorRef] = None):
        super().__init__()
        self.account_id = account_id
        self.sessions, self.spool, self.writer = sessions, spool, writer
        self.board, self.metrics, self.clock = board, metrics, clock
        self.dry_run_history = dry_run_history
        self.supervisor = supervisor
        self.session = None
        self.cursor = 0  # last spool seq handed to the writer
        self.state = m.AccountState(account_id=account_id, status=m.AccountStatus.CONNECTING, phone=phone)
        self.qr_code: Optional[str] = None

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
            self.session = self.sessions.open(self.account_id, self.state.phone, sink)
            self.session.start()
        except Exception as exc:
            # pykka does not call on_failure for on_start: without this the account
            # would sit there looking "connecting" and be silently deaf.
            self._session_failed(f"session could not start: {type(exc).__name__}: {exc}")

    def _session_failed(self, error: str) -> None:
        log.error("[realtime] accountId=%s %s", self.account_id, error)
        self.session = None
        self.state = replace(self.state, status=m.AccountStatus.DISCONNECTED, connected=False)
        self.writer.tell(IngestBatch(self.account_id, account_fields={
            "status": m.AccountStatus.DISCONNECTED.value, "lastRealtimeError": error}))
        self.board.publish_realtime(self.account_id, lastRealtimeError=error)
        self._publish()
        self._report(error)

    def on_stop(self) -> None:
        self._stop_session()

    def _stop_session(self) -> None:
        session, self.session = self.session, None
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
        if isinstance(message, PairPhone):
            # An ask: a session error goes back to the asker (pykka hands it over) and is
            # no reason to restart the account.
            if self.session is None:
                raise NotConnected(f"account {self.account_id} has no session")
            return self.session.pair_phone(message.phone)
        try:
            if isinstance(message, Wake):
                self._drain()
            elif message == "stop_session":
                self._stop_session()  # shutdown: no new events, but keep draining the spool
            elif message == "state":
                return self.state
            elif message == "qr":
                return self.qr_code
            elif message == "session":
                return self.session
        except Exception as exc:
            log.exception("[realtime] accountId=%s ingest failed", self.account_id)
            self.metrics.actor_failures.labels(actor="account").inc()
            self._report(f"{type(exc).__name__}: {exc}")

    def _report(self, error: str) -> None:
        if self.supervisor is not None and self.supervisor.is_alive():
            self.supervisor.tell(ChildFailed(self.account_id, error))

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
                self.spool.quarantine(row.seq, str(exc))
                log.warning("[realtime] accountId=%s quarantined seq=%d: %s", self.account_id, row.seq, exc)
                continue
            batch.seqs.append(row.seq)
            for event in events:
                r, p = self._apply(event, row, batch)
                real, protocol = real + r, protocol + p
        if real or protocol:
            log.info("[realtime] accountId=%s real=%d protocol=%d", self.account_id, real, protocol)
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
            batch.account_fields.update(lastRealtimeIngestAt=SERVER_TIME,
                                        lastRealtimeMessageAt=ms_to_dt(event.ts_client_ms))
            self.board.publish_realtime(self.account_id, lastRealtimeIngestAt=now,
                                        lastRealtimeMessageAt=event.ts_client_ms)
            return 1, 0
        if isinstance(event, m.ProtocolMessage):
            self.metrics.message_class.labels(**{"class": "protocol"}).inc()
            self.state = replace(self.state, last_protocol_message_ms=now,
                                 protocol_messages=self.state.protocol_messages + 1)
            return 0, 1
        if isinstance(event, m.HistoryBatch):
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
        merge_account_fields(batch.account_fields, dict(
            lastHistorySyncAt=SERVER_TIME, historySyncCount=Increment(1), lastHistorySyncResult=result))
        log.info("[history-sync] accountId=%s type=%s chunk=%d messages=%d skipped=%d dryRun=%s",
                 self.account_id, event.sync_type.value, event.chunk_order, len(event.messages), event.skipped,
                 self.dry_run_history)

    def _session_event(self, event, batch: IngestBatch) -> None:
        status = None
        now = self.clock.wall_ms()
        if isinstance(event, m.Connected):
            status = m.AccountStatus.CONNECTED
            self.state = replace(self.state, connected=True, connected_since_ms=now)
        elif isinstance(event, (m.Disconnected, m.StreamReplaced)):
            status = m.AccountStatus.DISCONNECTED
            self.state = replace(self.state, connected=False)
            if isinstance(event, m.StreamReplaced):
                log.warning("[lease] accountId=%s StreamReplaced: another client owns this session", self.account_id)
        elif isinstance(event, m.LoggedOut):
            status = m.AccountStatus.LOGGED_OUT
            self.state = replace(self.state, connected=False, needs_repair=True, repair_reason=event.reason)
            batch.account_fields.update(needsRepair=True, repairReason=event.reason, repairRequestedAt=SERVER_TIME)
        elif isinstance(event, m.QrCode):
            status = m.AccountStatus.PAIRING
            self.qr_code = event.codes[0] if event.codes else None
            self.board.publish_qr(self.account_id, self.qr_code)
        elif isinstance(event, m.PairSuccess):
            phone = event.jid.split("@")[0].split(":")[0]
            self.qr_code = None
            self.board.publish_qr(self.account_id, None)
            self.state = replace(self.state, jid=event.jid, phone=phone, needs_repair=False, repair_reason=None)
            batch.account_fields.update(jid=event.jid, phone=phone, needsRepair=False, repairReason=None)
        elif isinstance(event, m.ConnectFailure):
            batch.account_fields.update(lastRealtimeError=f"connect failure: {event.reason} {event.message}".strip())
        if status is not None and status is not self.state.status:
            self.state = replace(self.state, status=status)
            batch.account_fields["status"] = status.value

    def _publish(self) -> None:
        self.board.publish_account(self.state)
