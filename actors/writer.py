"""StoreWriterActor: the one writer of conversation data and account records.

Batches from all accounts are merged and flushed together when 500 operations are
waiting or ~100 ms after the first one arrived (at once, right after a full flush: a
backlog is draining). Only after the store confirmed a flush
are its spool rows marked done. Work waits in two lanes (`writer_lanes`): live work is
written first, history in slices of ≤ 500 messages, so a history sync never holds up
the live messages of other accounts; each account's order is kept. What waits in memory
is bounded: the actors that feed the writer stop reading the spool while a lane is full
(`Backlog`), so during a store outage the backlog stays in the spool.

Errors are sorted, so that one account never blocks the others:
- the store is unavailable (StoreError): everything is kept (here and in the spool) and
  retried with the daemon's one backoff rule; the store monitor cuts the wait short
  once the store answers again;
- the store refuses some data for good (Refused: bad data, a stale fence), or writing it
  raises something unexpected: the flush is retried one batch at a time (in order per
  account), and a batch that fails has its rows quarantined with the reason and the
  supervisor told; every other batch goes through. If nothing at all can be written
  and nothing was refused, the trouble is not in the data: everything is kept and
  retried, nothing quarantined.
"""
from __future__ import annotations

import logging
import random
from typing import Callable, Optional

import pykka

from wasync.actors.supervisor_protocol import WriteRejected
from wasync.actors.writer_lanes import Backlog, Lanes, Taken, Work, ops_of
from wasync.actors.writer_protocol import (
    AccountUpdate, Drain, FlushDue, IngestBatch, Ping, StoreAnswers, StoreFlushDue, WriterMsg,
)
from wasync.runtime.account import AccountPatch
from wasync.runtime.backoff import Backoff
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.spool import Spool
from wasync.runtime.store.base import Fence, Refused, StaleFence, StoreError
from wasync.runtime.ticker import Timer, Timers

log = logging.getLogger("wasync.writer")

FLUSH_OPS = 500
FLUSH_AFTER_S = 0.1
# History per flush: one store batch. A live message waits behind at most one slice; with
# 2,000 the slices took up to 1 s each while history was being read (bench/pipeline.py
# --only hol: live p99 1.5 s inside the daemon, 1.0 s with 500), for no more throughput.
BULK_SLICE_OPS = 500
# What may wait in memory before the feeders pause (rows then wait in the spool). Live:
# 50 s of 100 msgs/s; reached only when the store is down. Bulk: five slices.
LIVE_LIMIT_OPS = 5_000
BULK_LIMIT_OPS = 10_000
RETRY = Backoff(initial_ms=200, max_ms=30_000)
# How often the store is asked to write what it holds back (Firestore coalesces thread
# documents): spool rows are done only after that, so a held thread update is never lost.
STORE_FLUSH_S = 1.0



def _seqs(items: list[Work]) -> list[int]:
    return [seq for item in items if isinstance(item, IngestBatch) for seq in item.seqs]


def new_backlog() -> Backlog:
    return Backlog(LIVE_LIMIT_OPS, BULK_LIMIT_OPS)


class StoreWriterActor(pykka.ThreadingActor):
    def __init__(self, store, spool: Spool, board: Board, metrics: Metrics, clock: Clock, ticker: Timers, *,
                 on_rejected: Callable[[WriteRejected], None] = lambda rejected: None,
                 retry: Backoff = RETRY, rand: Optional[random.Random] = None,
                 backlog: Optional[Backlog] = None, slice_ops: Optional[int] = None):
        super().__init__()
        self.store, self.spool, self.board, self.metrics = store, spool, board, metrics
        self.clock, self.ticker, self.on_rejected = clock, ticker, on_rejected
        self.retry, self.rand = retry, rand or random.Random()
        self.backlog = backlog or new_backlog()
        self._backlog_gauges = (metrics.writer_backlog.labels(lane="live"), metrics.writer_backlog.labels(lane="bulk"))
        # A store that writes several chunks at once (Firestore) says how much history it can take.
        self._lanes = Lanes(slice_ops or getattr(store, "ingest_slice", BULK_SLICE_OPS))
        self._timer: Optional[Timer] = None  # the next flush: ~100 ms after a batch, or a retry
        self._flush_told = False  # a FlushDue of our own is in the mailbox
        # The last flush was full (FLUSH_OPS or more): a backlog is draining, more is on its
        # way, and waiting FLUSH_AFTER_S to gather it would only add to the drain.
        self._draining = False
        self._failures = 0  # flushes failed in a row; while > 0 a retry timer is always set
        self._failing_since: Optional[float] = None
        # Spool rows whose writes returned, but whose thread documents the store may still
        # hold back: done only after the next `store.flush()` (at most every STORE_FLUSH_S;
        # at once with a store that holds nothing back).
        self._unflushed: list[int] = []
        self._store_timer: Optional[Timer] = None
        self._store_failures = 0  # store.flush() failed in a row (its own retry timer)
        self._store_flushed_at: Optional[float] = None

    def on_receive(self, message: WriterMsg):
        try:
            match message:
                case IngestBatch() | AccountUpdate():
                    self._take(message)
                case FlushDue():
                    self._flush_told = False
                    self._timer = None
                    self._flush()
                case StoreFlushDue():
                    self._store_timer = None
                    self._flush_store()
                case StoreAnswers():
                    if self._failures:
                        self._flush()
                    if self._store_failures:
                        self._flush_store()
                case Drain():
                    return self._drain()
                case Ping():
                    return True
        except Exception:
            # Never let the writer die: what waits is kept (see _flush), count, retry later.
            log.exception("[realtime] writer: unexpected error; retrying")
            self.metrics.actor_failures.labels(actor="writer").inc()
            self._later(self.retry.delay_s(self._failures, self.rand))
        return None

    def on_stop(self) -> None:
        for timer in (self._timer, self._store_timer):
            if timer is not None:
                timer.cancel()

    def _take(self, item: Work) -> None:
        self._lanes.add(item)
        self._publish_backlog(taken=item)
        if self._failures:
            return  # the store is failing: the retry timer is set
        if self._draining or self._lanes.live_ops >= FLUSH_OPS or self._lanes.bulk_ops >= FLUSH_OPS:
            self._flush_soon()
        elif self._timer is None:
            self._later(FLUSH_AFTER_S)

    def _flush_soon(self) -> None:
        """Flush once what is already in the mailbox is taken (live work first)."""
        if not self._flush_told:
            self._flush_told = True
            self.actor_ref.tell(FlushDue())

    def _publish_backlog(self, taken: Optional[Work] = None) -> None:
        live, bulk = self._lanes.live_ops, self._lanes.bulk_ops
        self.backlog.set(live, bulk, taken)
        self._backlog_gauges[0].set(live)
        self._backlog_gauges[1].set(bulk)

    def _later(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.ticker.later(self.actor_ref, FlushDue(), delay_s)

    def _drain(self) -> bool:
        """Flush now, every slice (shutdown); True if nothing is left waiting."""
        while self._lanes:
            self._flush()
            if self._failures:
                break
        if not self._lanes:
            self._flush_store()
        return not self._lanes and not self._unflushed

    # --- flushing ----------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._lanes:
            return
        taken = self._lanes.take()
        items = taken.items
        self._draining = sum(ops_of(item) for item in items) >= FLUSH_OPS
        started = self.clock.monotonic_s()
        try:
            done, kept, trouble = self._write_all(items)
        except BaseException:
            self._lanes.put_back(taken)  # whatever broke, nothing that waited is dropped
            self._publish_backlog()
            raise
        kept_ids = {id(item) for item in kept}
        self._lanes.finished([item for item in items if id(item) not in kept_ids], taken)
        if kept:
            self._lanes.put_back(Taken([i for i in taken.live if id(i) in kept_ids],
                                       [i for i in taken.bulk if id(i) in kept_ids]))
            self._failed(kept, trouble, started)
        if done:
            self._succeeded(done, started, whole=not kept)
        self._publish_backlog()
        if self._lanes.bulk and not self._failures:
            self._flush_soon()  # the next slice, after whatever live work arrived meanwhile

    def _write_all(self, items: list[Work]) -> tuple[list[Work], list[Work], Optional[Exception]]:
        """(written, kept for a retry, why they were kept)."""
        try:
            self._write(items)
            return items, [], None
        except Exception as exc:
            if _retryable(exc):
                return [], items, exc
            log.warning("[realtime] a flush failed (%s): writing it one batch at a time", _describe(exc))
        return self._write_one_by_one(items)

    def _write_one_by_one(self, items: list[Work]) -> tuple[list[Work], list[Work], Optional[Exception]]:
        """Find the batches that cannot be written. In order per account: once one of an
        account's batches must be retried, its later ones wait with it."""
        done: list[Work] = []
        kept: list[Work] = []
        failed: list[tuple[Work, Exception]] = []
        held: set[str] = set()
        for item in items:
            if item.account_id in held:
                kept.append(item)
                continue
            try:
                self._write([item])
                done.append(item)
            except Exception as exc:
                if _retryable(exc):
                    held.add(item.account_id)
                    kept.append(item)
                else:
                    failed.append((item, exc))
        refused = [(item, exc) for item, exc in failed if isinstance(exc, Refused)]
        if failed and not done and not refused:
            # Every batch fails, and not because the store refuses the data: the trouble is
            # here or in the store, not in any account's data. Quarantine nothing.
            log.error("[realtime] every batch of a flush failed unexpectedly (%s); keeping them all",
                      _describe(failed[0][1]))
            return [], items, failed[0][1]
        for item, exc in failed:
            self._reject(item, exc)
        return done, kept, next((exc for _, exc in failed), None) if kept else None

    def _reject(self, item: Work, exc: Exception) -> None:
        seqs = _seqs([item]) or list(getattr(item, "seqs_if_refused", ()))
        reason = _describe(exc)
        log.error("[realtime] accountId=%s the store refused a write for good (%s): %d events quarantined",
                  item.account_id, reason, len(seqs), exc_info=not isinstance(exc, Refused))
        if isinstance(exc, StaleFence):
            log.warning("[lease] accountId=%s a write with a stale fence was refused", item.account_id)
        self.spool.quarantine(seqs, f"store refused: {reason}")
        self.metrics.store_rejected.labels(reason=type(exc).__name__).inc()
        self.metrics.quarantined.inc(len(seqs))
        stale = getattr(item, "fence", None) if isinstance(exc, StaleFence) else None
        if isinstance(exc, StaleFence):
            self.metrics.stale_fence_rejections.inc()
        try:
            self.on_rejected(WriteRejected(item.account_id, reason, len(seqs), stale_fence=stale))
        except pykka.ActorDeadError:
            pass  # shutting down

    def _write(self, items: list[Work]) -> None:
        now_ms = self.clock.wall_ms()
        batches = [item for item in items if isinstance(item, IngestBatch)]
        op = "messages"
        try:
            messages = [m for b in batches for m in b.messages]
            if messages:
                self.store.upsert_messages(messages, now_ms)  # the store chunks them (and may overlap the chunks)
            # Receipts, edits and revokes after the messages they may point at (a patch
            # for a message not stored yet is kept by the store, so order is a courtesy).
            for op, attr, apply in (("receipts", "receipts", self.store.apply_receipts),
                                    ("edits", "edits", self.store.apply_edits),
                                    ("revokes", "revokes", self.store.apply_revokes),
                                    ("threads", "threads", self.store.update_threads)):
                found = [x for b in batches for x in getattr(b, attr)]
                if found:
                    apply(found, now_ms)
            op = "accounts"
            patches: dict[tuple[str, Optional[Fence]], AccountPatch] = {}  # fenced ones apart
            for item in items:
                if item.patch:
                    key = (item.account_id, getattr(item, "fence", None))
                    earlier = patches.get(key)
                    patches[key] = item.patch if earlier is None else earlier.then(item.patch)
            for (account_id, fence), patch in patches.items():
                self.store.update_account(account_id, patch, now_ms, fence=fence)
        except Exception:
            self.metrics.store_errors.labels(op=op).inc()
            raise

    def _failed(self, items: list[Work], exc: Exception, started: float) -> None:
        self.board.publish_writes(False, _describe(exc))
        if self._failing_since is None:
            self._failing_since = started
        delay = self.retry.delay_s(self._failures, self.rand)
        self._failures += 1
        log.warning("[realtime] store write failed (%s); %d batches kept, retry in %.1fs",
                    _describe(exc), len(self._lanes), delay)
        self._later(delay)

    def _succeeded(self, items: list[Work], started: float, whole: bool) -> None:
        """`items` are stored; `whole`: everything this flush took (the store is fine again)."""
        self._unflushed.extend(_seqs(items))
        done_ms = self.clock.wall_ms()
        self.metrics.flush_seconds.observe(self.clock.monotonic_s() - started)
        self.metrics.flush_batch.observe(sum(ops_of(item) for item in items))
        for item in items:
            if isinstance(item, IngestBatch):
                for received in item.received_ms:
                    self.metrics.event_to_store.observe(max(0, done_ms - received) / 1000)
        if whole:
            if self._failing_since is not None:
                log.info("[realtime] store writes recovered after %.1fs", started - self._failing_since)
            self._failing_since, self._failures = None, 0
            if not self._store_failures:
                self.board.publish_writes(True)
        self._flush_store_soon()

    # --- what the store holds back -----------------------------------------------------------

    def _flush_store_soon(self) -> None:
        if self._store_timer is not None:
            return
        now = self.clock.monotonic_s()
        since = None if self._store_flushed_at is None else now - self._store_flushed_at
        if not self.store.holds_back or since is None or since >= STORE_FLUSH_S:
            self._flush_store()
        else:
            self._store_timer = self.ticker.later(self.actor_ref, StoreFlushDue(), STORE_FLUSH_S - since)

    def _flush_store(self) -> None:
        """Have the store write what it holds back, then release the spool rows."""
        if not self._unflushed:
            return
        try:
            self.store.flush()
        except Refused as exc:
            # A held-back thread summary the store will never take: the messages are stored,
            # and thread repair rebuilds summaries; holding every account's rows would not help.
            log.error("[realtime] the store refused held-back thread updates for good: %s", exc)
            self.metrics.store_rejected.labels(reason=type(exc).__name__).inc()
        except Exception as exc:
            self.metrics.store_errors.labels(op="threads").inc()
            self.board.publish_writes(False, _describe(exc))
            delay = self.retry.delay_s(self._store_failures, self.rand)
            self._store_failures += 1
            log.warning("[realtime] store flush failed: %s; %d events kept, retry in %.1fs",
                        exc, len(self._unflushed), delay)
            if self._store_timer is not None:
                self._store_timer.cancel()
            self._store_timer = self.ticker.later(self.actor_ref, StoreFlushDue(), delay)
            return
        self._store_flushed_at = self.clock.monotonic_s()
        if self._store_failures:
            log.info("[realtime] the store wrote what it held back after %d failed attempts", self._store_failures)
            self._store_failures = 0
            if not self._failures:
                self.board.publish_writes(True)
        self.spool.done(self._unflushed)  # first: if it fails, the rows stay ours to retry
        self._unflushed = []


def _retryable(exc: BaseException) -> bool:
    """The store is unavailable (retry, for everyone) rather than refusing this data."""
    return isinstance(exc, StoreError) and not isinstance(exc, Refused)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
