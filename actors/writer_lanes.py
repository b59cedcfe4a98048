"""The writer's two lanes: live events first, history in bounded slices, per-account order kept.

A history sync hands the writer tens of thousands of messages at once. In one FIFO queue
every live message of every other account would wait behind them (measured: event ->
store p99 5.8 s during a 200,000-message burst). So the writer keeps two lanes:

- **live**: realtime batches, account decisions. Each flush takes all of it.
- **bulk**: batches that carry history. Each flush takes at most `slice_ops` of it
  (splitting a big batch), so a flush is short and the live lane is looked at again
  between slices.

Per-account order is kept: once an account has anything in the bulk lane (waiting or
being written), its later work goes behind it into the bulk lane too, until all of it
is written. Other accounts' live work never waits for it.

Pure: no actor, no store. `Backlog` publishes the lanes' sizes to the actors that feed
the writer (so the writer's memory stays bounded while the store is down).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

from wasync.actors.writer_protocol import AccountUpdate, IngestBatch

log = logging.getLogger("wasync.writer")

Work = Union[IngestBatch, AccountUpdate]


def ops_of(item: Work) -> int:
    return max(1, item.ops) if isinstance(item, IngestBatch) else 1


def is_bulk(item: Work) -> bool:
    return isinstance(item, IngestBatch) and item.bulk


def split(batch: IngestBatch, messages: int) -> tuple[IngestBatch, IngestBatch]:
    """(the first `messages` messages, the rest). The head carries messages only; the rest
    keeps everything else, its spool rows included: they leave the spool only once the
    last piece is stored. A head the store refuses quarantines the rows (`seqs_if_refused`)."""
    head = IngestBatch(batch.account_id, messages=batch.messages[:messages], bulk=batch.bulk,
                       seqs_if_refused=batch.seqs or batch.seqs_if_refused)
    return head, replace(batch, messages=batch.messages[messages:])


@dataclass
class Taken:
    """What one flush writes: each item with the lane it came from."""

    live: list[Work]
    bulk: list[Work]

    @property
    def items(self) -> list[Work]:
        return self.live + self.bulk


class Lanes:
    def __init__(self, slice_ops: int):
        self.slice_ops = slice_ops
        self.live: list[Work] = []
        self.bulk: list[Work] = []
        self.live_ops = 0
        self.bulk_ops = 0
        # Pieces of each account's bulk work not yet written (waiting or in a flush).
        self._in_bulk: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self.live or self.bulk)

    def __len__(self) -> int:
        return len(self.live) + len(self.bulk)

    def add(self, item: Work) -> bool:
        """Queue `item`; True if it went to the bulk lane."""
        if is_bulk(item) or self._in_bulk[item.account_id]:
            self.bulk.append(item)
            self.bulk_ops += ops_of(item)
            self._in_bulk[item.account_id] += 1
            return True
        self.live.append(item)
        self.live_ops += ops_of(item)
        return False

    def take(self) -> Taken:
        """All of the live lane and a slice of the bulk lane (≤ slice_ops, one big batch split)."""
        live, self.live, self.live_ops = self.live, [], 0
        bulk: list[Work] = []
        room = self.slice_ops
        while self.bulk and room > 0:
            item = self.bulk[0]
            size = ops_of(item)
            if size > room and isinstance(item, IngestBatch) and len(item.messages) > room:
                head, rest = split(item, room)
                self.bulk[0] = rest
                self._in_bulk[item.account_id] += 1  # two pieces now
                self.bulk_ops -= ops_of(head)
                bulk.append(head)
                break
            self.bulk.pop(0)
            self.bulk_ops -= size
            bulk.append(item)
            room -= size
        return Taken(live, bulk)

    def put_back(self, taken: Taken) -> None:
        """A flush could not write these: back to the front of their lanes, in order."""
        self.live = taken.live + self.live
        self.live_ops = sum(ops_of(item) for item in self.live)
        self.bulk = taken.bulk + self.bulk
        self.bulk_ops = sum(ops_of(item) for item in self.bulk)

    def finished(self, items: list[Work], taken: Taken) -> None:
        """`items` (from `taken`) were written or quarantined: their accounts' order no longer
        depends on them."""
        bulk_ids = {id(item) for item in taken.bulk}
        for item in items:
            if id(item) in bulk_ids:
                self._in_bulk[item.account_id] -= 1
                if self._in_bulk[item.account_id] <= 0:
                    del self._in_bulk[item.account_id]


class Backlog:
    """How much work the writer holds in memory, published for the actors that feed it.

    A feeder asks `has_room(bulk, key, wake)` before it reads more rows from the spool,
    says `handing(batch)` just before it tells the writer what they became, and
    `read_done(key)` after. When the answer is no, its `wake` is called (once, so it must
    only tell) when there is room again. Feeders never wait: the rows stay in the spool,
    which is what holds a backlog (a store outage).

    What counts is what the writer holds (`set`, by the writer alone) and what was handed
    to it and not taken yet: a writer stuck in a store call takes nothing from its
    mailbox, and that is memory too. Counting only the lanes, a 60 s outage (the SQLite
    store waits out its 30 s busy timeout) put every row of it into the writer's mailbox:
    +46 MiB over 30,000 live messages, growing with the outage.

    Bulk readers are also limited in number (`bulk_readers`, default 1): turning history
    rows into messages is the heaviest Python work in the daemon, and ten accounts doing it
    at once on ten threads starve everyone else of the interpreter lock (measured: the
    writer's flushes took 3 s, live messages waited behind them). One at a time, history
    goes as fast (the lock allows no more) and live work gets its turn."""

    def __init__(self, live_limit_ops: int, bulk_limit_ops: int, bulk_readers: int = 1):
        self.limits = {False: live_limit_ops, True: bulk_limit_ops}
        self.bulk_readers = bulk_readers
        self._ops = {False: 0, True: 0}  # in the writer's lanes
        self._handed = {False: 0, True: 0}  # told to the writer, not taken into its lanes yet
        self._reading: set[str] = set()  # feeders holding a bulk reader's turn
        self._waiting: dict[tuple[bool, str], Callable[[], None]] = {}
        self._lock = threading.Lock()

    def has_room(self, bulk: bool, key: str, wake: Optional[Callable[[], None]]) -> bool:
        """`wake` None: the feeder asks again by itself (a periodic sweep)."""
        with self._lock:
            if self._ops[bulk] + self._handed[bulk] < self.limits[bulk] and (
                    not bulk or key in self._reading or len(self._reading) < self.bulk_readers):
                if bulk:
                    self._reading.add(key)
                return True
            if wake is not None:
                self._waiting[(bulk, key)] = wake
            return False

    def read_done(self, key: str) -> None:
        """The feeder handed over what it read: its bulk reader's turn goes to the next."""
        with self._lock:
            if key not in self._reading:
                return
            self._reading.discard(key)
            woken = self._due()
        _wake_all(woken)

    def handing(self, item: Work) -> None:
        """A feeder is about to tell the writer `item` (before the tell: the writer may take it at once)."""
        with self._lock:
            self._handed[is_bulk(item)] += ops_of(item)

    def set(self, live_ops: int, bulk_ops: int, taken: Optional[Work] = None) -> None:
        """The writer's lanes now hold this much, `taken` among it. Work nobody said it was
        handing (an account's error, a supervisor's decision, a walk's thread summaries) is
        taken off too, never below zero: the count errs towards room (the cap gives by that
        much), never towards a feeder parked for good."""
        with self._lock:
            self._ops = {False: live_ops, True: bulk_ops}
            if taken is not None:
                lane = is_bulk(taken)
                self._handed[lane] = max(0, self._handed[lane] - ops_of(taken))
            woken = self._due()
        _wake_all(woken)

    def _due(self) -> list[Callable[[], None]]:
        """Waiters to wake (under the lock): every live one once its lane is half empty; bulk
        ones once half empty too, as many as there are free reader turns."""
        woken = []
        turns = self.bulk_readers - len(self._reading)
        for bulk, key in list(self._waiting):
            if self._ops[bulk] + self._handed[bulk] > self.limits[bulk] // 2:
                continue
            if bulk:
                if turns <= 0:
                    continue
                turns -= 1
            woken.append(self._waiting.pop((bulk, key)))
        return woken


def _wake_all(woken: list[Callable[[], None]]) -> None:
    """Each waiter once; one that fails must not cost the others their wake-up (taken off
    the waiting list, they would stay parked for good: deaf accounts)."""
    for wake in woken:
        try:
            wake()
        except Exception:
            log.exception("[realtime] waking a feeder of the writer failed")
