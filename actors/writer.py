"""StoreWriterActor: drains every account's ingest batches into the store.

Batches from all accounts are merged and flushed together when 500 operations are
waiting or ~100 ms after the first one arrived. Only after the store confirmed a flush
are its spool rows marked done. A store error keeps everything (in memory and in the
spool) and retries with capped exponential backoff: nothing is ever dropped.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import pykka

from wasync.actors.timers import tell_later
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate
from wasync.runtime.spool import Spool
from wasync.runtime.store.schema import Increment

log = logging.getLogger("wasync.writer")

FLUSH_OPS = 500
FLUSH_AFTER_S = 0.1
RETRY_S = (0.2, 30.0)
# How often the store is asked to write what it holds back (Firestore coalesces thread
# documents): spool rows are done only after that, so a held thread update is never lost.
STORE_FLUSH_S = 1.0


@dataclass
class IngestBatch:
    """What a run of spool rows of one account became."""

    account_id: str
    seqs: list[int] = field(default_factory=list)
    received_ms: list[int] = field(default_factory=list)  # per message row: event -> store latency
    messages: list[Message] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    edits: list[MessageEdit] = field(default_factory=list)
    revokes: list[MessageRevoke] = field(default_factory=list)
    threads: list[ThreadUpdate] = field(default_factory=list)
    account_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return (len(self.messages) + len(self.receipts) + len(self.edits) + len(self.revokes) + len(self.threads)
                + (1 if self.account_fields else 0))


@dataclass(frozen=True)
class _Flush:
    pass


@dataclass(frozen=True)
class _StoreFlush:
    pass


def merge_account_fields(into: dict[str, Any], fields: dict[str, Any]) -> None:
    """Later values win, except counters, which add up."""
    for key, value in fields.items():
        old = into.get(key)
        if isinstance(value, Increment) and isinstance(old, Increment):
            into[key] = Increment(old.by + value.by)
        else:
            into[key] = value


class StoreWriterActor(pykka.ThreadingActor):
    def __init__(self, store, spool: Spool, board: Board, metrics: Metrics, clock: Clock):
        super().__init__()
        self.store, self.spool, self.board, self.metrics, self.clock = store, spool, board, metrics, clock
        self._waiting: list[IngestBatch] = []
        self._ops = 0
        self._timer: Optional[threading.Timer] = None
        self._retry_s = RETRY_S[0]
        self._failing_since: Optional[float] = None
        # Spool rows whose writes returned, but whose thread documents the store may still
        # hold back: done only after the next `store.flush()` (at most every STORE_FLUSH_S).
        self._unflushed: list[int] = []
        self._store_timer: Optional[threading.Timer] = None
        self._store_flushed_at: Optional[float] = None

    def on_receive(self, message):
        try:
            if isinstance(message, IngestBatch):
                self._waiting.append(message)
                self._ops += max(1, message.ops)
                if self._ops >= FLUSH_OPS:
                    self._flush()
                elif self._timer is None:
                    self._schedule(FLUSH_AFTER_S)
            elif isinstance(message, _Flush):
                self._timer = None
                self._flush()
            elif isinstance(message, _StoreFlush):
                self._store_timer = None
                self._flush_store()
            elif message == "drain":
                return self._drain()
            elif message == "pending":
                return sum(len(b.seqs) for b in self._waiting)
        except Exception:
            # Never let the writer die: keep what waits, count, retry later.
            log.exception("[realtime] writer: unexpected error; retrying")
            self.metrics.actor_failures.labels(actor="writer").inc()
            self._schedule(self._retry_s)

    def on_stop(self):
        if self._timer:
            self._timer.cancel()
        if self._store_timer:
            self._store_timer.cancel()

    def _schedule(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = tell_later(self.actor_ref, _Flush(), delay_s)

    def _drain(self) -> bool:
        """Flush now (shutdown); True if nothing is left waiting."""
        if self._waiting:
            self._flush()
        if not self._waiting:
            self._flush_store()
        return not self._waiting and not self._unflushed

    def _flush_store_soon(self) -> None:
        if self._store_timer is not None:
            return
        now = self.clock.monotonic_s()
        since = None if self._store_flushed_at is None else now - self._store_flushed_at
        if since is None or since >= STORE_FLUSH_S:
            self._flush_store()
        else:
            self._schedule_store_flush(STORE_FLUSH_S - since)

    def _schedule_store_flush(self, delay_s: float) -> None:
        if self._store_timer is not None:
            self._store_timer.cancel()
        self._store_timer = tell_later(self.actor_ref, _StoreFlush(), delay_s)

    def _flush_store(self) -> None:
        """Have the store write what it holds back, then release the spool rows."""
        if not self._unflushed:
            return
        started = self.clock.monotonic_s()
        try:
            self.store.flush()
        except Exception as exc:
            self.metrics.store_errors.labels(op="threads").inc()
            self.board.store_failed(f"{type(exc).__name__}: {exc}")
            if self._failing_since is None:
                self._failing_since = started
            log.warning("[realtime] store flush failed: %s; %d events kept, retry in %.1fs",
                        exc, len(self._unflushed), self._retry_s)
            self._schedule_store_flush(self._retry_s)
            self._retry_s = min(self._retry_s * 2, RETRY_S[1])
            return
        self._store_flushed_at = self.clock.monotonic_s()
        self._retry_s = RETRY_S[0]
        if self._failing_since is not None:
            self.board.store_ok()
            log.info("[realtime] store writes recovered after %.1fs", started - self._failing_since)
            self._failing_since = None
        seqs, self._unflushed = self._unflushed, []
        self.spool.done(seqs)

    def _flush(self) -> None:
        if not self._waiting:
            return
        batches, self._waiting, self._ops = self._waiting, [], 0
        started = self.clock.monotonic_s()
        now_ms = self.clock.wall_ms()
        op = "messages"
        try:
            messages = [m for b in batches for m in b.messages]
            for start in range(0, len(messages), FLUSH_OPS):
                self.store.upsert_messages(messages[start:start + FLUSH_OPS], now_ms)
            # Receipts, edits and revokes after the messages they may point at (a patch
            # for a message not stored yet is kept by the store, so order is a courtesy).
            for op, attr, apply in (("receipts", "receipts", self.store.apply_receipts),
                                    ("edits", "edits", self.store.apply_edits),
                                    ("revokes", "revokes", self.store.apply_revokes),
                                    ("threads", "threads", self.store.update_threads)):
                items = [item for b in batches for item in getattr(b, attr)]
                if items:
                    apply(items, now_ms)
            op = "accounts"
            fields: dict[str, dict] = {}
            for b in batches:
                if b.account_fields:
                    merge_account_fields(fields.setdefault(b.account_id, {}), b.account_fields)
            for account_id, account_fields in fields.items():
                self.store.merge_account(account_id, account_fields, now_ms)
        except Exception as exc:
            self._waiting = batches + self._waiting
            self._ops = sum(max(1, b.ops) for b in self._waiting)
            self.metrics.store_errors.labels(op=op).inc()
            self.board.store_failed(f"{type(exc).__name__}: {exc}")
            if self._failing_since is None:
                self._failing_since = started
            log.warning("[realtime] store write failed (op=%s): %s; %d batches kept, retry in %.1fs",
                        op, exc, len(self._waiting), self._retry_s)
            self._schedule(self._retry_s)
            self._retry_s = min(self._retry_s * 2, RETRY_S[1])
            return
        self._unflushed.extend(s for b in batches for s in b.seqs)
        elapsed = self.clock.monotonic_s() - started
        done_ms = self.clock.wall_ms()
        self.metrics.flush_seconds.observe(elapsed)
        self.metrics.flush_batch.observe(sum(b.ops for b in batches))
        for b in batches:
            for received in b.received_ms:
                self.metrics.event_to_store.observe(max(0, done_ms - received) / 1000)
        self.board.store_ok()
        if self._failing_since is not None:
            log.info("[realtime] store writes recovered after %.1fs", started - self._failing_since)
            self._failing_since = None
        self._retry_s = RETRY_S[0]
        self._flush_store_soon()
