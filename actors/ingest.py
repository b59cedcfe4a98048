"""What spool rows become: normalized events folded into one IngestBatch for the writer.

The one place that turns raw events into store writes, shared by the AccountActor (which
also learns its health facts from the same events) and the SweeperActor (rows of
accounts that no actor reads here). A row that cannot be understood goes to the
quarantine with the reason; every other row's seq travels in the batch and leaves the
spool once the store has confirmed it.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from wasync.actors.writer_lanes import Backlog
from wasync.actors.writer_protocol import IngestBatch
from wasync.runtime import model as m
from wasync.runtime.account import AccountPatch, HistorySyncResult, HistorySyncUpdate
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.spool import Spool, SpoolRow
from wasync.runtime.transport.normalize import NormalizeError, normalize

log = logging.getLogger("wasync.ingest")


@dataclass
class Folded:
    """One run of rows: the batch for the writer, and every event with its row (the
    account actor reads its health facts from them)."""

    batch: IngestBatch
    events: list[tuple[SpoolRow, m.NormalizedEvent]] = field(default_factory=list)
    real: int = 0
    protocol: int = 0


@dataclass(frozen=True)
class Ingest:
    """The surroundings the fold needs (shared by every actor that ingests)."""

    spool: Spool
    metrics: Metrics
    clock: Clock
    dry_run_history: bool
    # The writer's: feeders ask it before reading the spool (has_room / read_done), and
    # while a lane is full they leave the rows there.
    backlog: Backlog

    def fold(self, account_id: str, rows: list[SpoolRow]) -> Folded:
        b = _Builder(account_id)
        events: list[tuple[SpoolRow, m.NormalizedEvent]] = []
        real = protocol = 0
        for row in rows:
            try:
                normalized = normalize(account_id, row.kind, row.raw)
            except NormalizeError as exc:
                self.metrics.normalize_errors.inc()
                self.metrics.quarantined.inc()
                self.spool.quarantine([row.seq], str(exc))
                log.warning("[realtime] accountId=%s quarantined seq=%d: %s", account_id, row.seq, exc)
                continue
            b.seqs.append(row.seq)
            for event in normalized:
                events.append((row, event))
                r, p = self._fold_event(event, row, b)
                real, protocol = real + r, protocol + p
        if b.live:
            # Once per page, not per message (a backlog is drained 200 rows at a time, and
            # each labels() takes a lock): the last message's times, the counts by kind.
            b.patch(AccountPatch(realtime_ingest_ms=self.clock.wall_ms(), realtime_message_ms=b.live[-1].ts_client_ms))
            self._count_messages(b.live)
        if real:
            self.metrics.message_class.labels(**{"class": "real"}).inc(real)
        if protocol:
            self.metrics.message_class.labels(**{"class": "protocol"}).inc(protocol)
        return Folded(b.build(), events, real, protocol)

    def _count_messages(self, messages: list[m.Message]) -> None:
        # Counted per kind, not per message: a history chunk holds thousands (labels() takes a lock).
        for (source, kind), count in Counter((msg.sync_source, msg.message_type) for msg in messages).items():
            self.metrics.messages_ingested.labels(source=source.value, type=kind.value).inc(count)

    def _fold_event(self, event: m.NormalizedEvent, row: SpoolRow, b: "_Builder") -> tuple[int, int]:
        """Add what `event` writes to the batch; returns (real, protocol) message counts."""
        if isinstance(event, m.Message):
            b.messages.append(event)
            b.live.append(event)
            b.received_ms.append(row.received_at_ms)
            if event.push_name and not event.is_group and event.direction is m.Direction.INBOUND:
                b.threads.append(m.ThreadUpdate(b.account_id, event.client_jid, display_name=event.push_name))
            return 1, 0
        if isinstance(event, m.ProtocolMessage):
            return 0, 1
        metrics = self.metrics
        if isinstance(event, m.HistoryBatch):
            self._history(event, row, b)
        elif isinstance(event, m.Receipt):
            metrics.receipts.labels(kind=event.kind.value).inc()
            if event.status is not None:
                b.receipts.append(event)
        elif isinstance(event, m.MessageEdit):
            b.edits.append(event)
        elif isinstance(event, m.MessageRevoke):
            b.revokes.append(event)
        elif isinstance(event, m.Ignored):
            metrics.ignored.labels(reason=event.reason.split(":")[0]).inc()
        elif isinstance(event, m.PairSuccess):
            b.patch(AccountPatch(jid=event.jid, phone=phone_of(event.jid)))
        elif isinstance(event, m.ConnectFailure):
            b.patch(AccountPatch(realtime_error=f"connect failure: {event.reason} {event.message}".strip()))
        return 0, 0

    def _history(self, event: m.HistoryBatch, row: SpoolRow, b: "_Builder") -> None:
        b.bulk = True
        dry = self.dry_run_history
        if not dry:
            b.messages.extend(event.messages)
            b.threads.extend(event.threads)
            self._count_messages(event.messages)
        if event.sync_type is m.HistorySyncType.ON_DEMAND:
            # An answer to our own request (a backfill walk): not a history sync of the phone's.
            log.info("[auto-backfill] accountId=%s on-demand answer chats=%d messages=%d", b.account_id,
                     len(event.threads), len(event.messages))
            return
        result = HistorySyncResult(saved=0 if dry else len(event.messages), skipped=event.skipped, errors=0,
                                   total=len(event.messages) + event.skipped, dry_run=dry)
        # Known by the spool row it was first written to: a replayed chunk is not counted twice.
        chunk = row.origin or (self.spool.id, row.seq)
        b.patch(AccountPatch(history=HistorySyncUpdate(self.clock.wall_ms(), result, (chunk,))))
        log.info("[history-sync] accountId=%s type=%s chunk=%d messages=%d skipped=%d dryRun=%s", b.account_id,
                 event.sync_type.value, event.chunk_order, len(event.messages), event.skipped, dry)


def phone_of(jid: str) -> str:
    """'15550001111:12@s.whatsapp.net' -> '15550001111'."""
    return jid.split("@")[0].split(":")[0]


@dataclass
class _Builder:
    account_id: str
    seqs: list[int] = field(default_factory=list)
    received_ms: list[int] = field(default_factory=list)
    messages: list[m.Message] = field(default_factory=list)
    live: list[m.Message] = field(default_factory=list)  # the live ones among them
    receipts: list[m.Receipt] = field(default_factory=list)
    edits: list[m.MessageEdit] = field(default_factory=list)
    revokes: list[m.MessageRevoke] = field(default_factory=list)
    threads: list[m.ThreadUpdate] = field(default_factory=list)
    account: Optional[AccountPatch] = None
    bulk: bool = False

    def patch(self, change: AccountPatch) -> None:
        self.account = change if self.account is None else self.account.then(change)

    def build(self) -> IngestBatch:
        return IngestBatch(self.account_id, tuple(self.seqs), tuple(self.received_ms), tuple(self.messages),
                           tuple(self.receipts), tuple(self.edits), tuple(self.revokes), tuple(self.threads),
                           self.account, self.bulk)
