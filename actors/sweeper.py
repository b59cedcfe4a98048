"""SweeperActor: writes the spool rows of accounts that no actor here reads, so that no
row is ever stranded.

Rows keep arriving for an account after its actor let go of it: the session's last
`Disconnected` as it stops, events of a session killed from outside, rows an earlier run
left for an account since removed. And a process on this host may die with rows in its
own spool file: every ADOPT_EVERY_S the sweeper adopts such files (runtime/spool.py). The account may be removed, held for repair, taken
over by another client, or moved to another instance. Whatever the reason, its rows are
still written to the store (through the same fold as the account actor's,
actors/ingest.py) or quarantined with the reason; an account that an actor here reads
now, or will once it starts (the board's `ingesting`), is left to that actor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Union

import pykka

from wasync.actors.ingest import Folded, Ingest
from wasync.runtime import model as m
from wasync.runtime.board import Board
from wasync.runtime.ticker import Timers

log = logging.getLogger("wasync.sweeper")

SWEEP_EVERY_S = 2.0
ADOPT_EVERY_S = 30.0
ROWS_PER_STEP = 500
# ...and about this much raw data at most, as an account actor reads (history rows are
# megabytes, and a step becomes one batch in the writer's memory).
BYTES_PER_STEP = 1 << 20


@dataclass(frozen=True)
class SweepDue:
    """Ticker: the periodic sweep."""


@dataclass(frozen=True)
class SweepNow:
    """Ask (shutdown drain): sweep now; answers with the number of rows handed over."""


SweeperMsg = Union[SweepDue, SweepNow]


class SweeperActor(pykka.ThreadingActor):
    def __init__(self, ingest: Ingest, writer: pykka.ActorRef, board: Board, ticker: Timers,
                 every_s: float = SWEEP_EVERY_S):
        super().__init__()
        self.ingest, self.writer, self.board, self.ticker = ingest, writer, board, ticker
        self.every_s = every_s
        self.cursors: dict[str, int] = {}  # per account: last seq handed to the writer
        self._sweeps = 0

    def on_start(self) -> None:
        self.ticker.later(self.actor_ref, SweepDue(), self.every_s)

    def on_receive(self, message: SweeperMsg):
        try:
            return self._sweep()
        except Exception:
            log.exception("[realtime] sweeping the spool failed")
            return 0
        finally:
            if isinstance(message, SweepDue):
                self.ticker.later(self.actor_ref, SweepDue(), self.every_s)

    def _note_replaced(self, account_id: str, folded: Folded) -> None:
        """A socket kicked while no actor here read its events (an instance frozen, then
        woken after its leases moved on) is said, as an account actor would say it."""
        for _row, event in folded.events:
            if isinstance(event, m.StreamReplaced):
                self.ingest.metrics.account_stream_replaced.labels(account_id).inc()
                log.warning("[lease] accountId=%s StreamReplaced: another client owns this session (swept: no "
                            "actor runs it here)", account_id)

    def _writer_has_room(self) -> bool:
        """Both lanes (swept rows may be live or history), and a bulk reader's turn; if not,
        the next sweep tries again."""
        return all(self.ingest.backlog.has_room(bulk, "sweeper", None) for bulk in (False, True))

    def _sweep(self) -> int:
        spool = self.ingest.spool
        self._sweeps += 1
        if self._sweeps % max(1, round(ADOPT_EVERY_S / self.every_s)) == 0:
            spool.adopt_orphans()
        pending = set(spool.accounts_with_pending())
        for account_id in list(self.cursors):
            if account_id not in pending or self.board.ingesting(account_id):
                del self.cursors[account_id]  # done, or an actor reads it again
        handed = 0
        for account_id in sorted(pending):
            if self.board.ingesting(account_id):
                continue
            count = 0
            while self._writer_has_room():
                try:
                    rows = spool.pending(account_id, after_seq=self.cursors.get(account_id, 0), limit=ROWS_PER_STEP,
                                         max_bytes=BYTES_PER_STEP)
                    if rows:
                        folded = self.ingest.fold(account_id, rows)
                        self.ingest.backlog.handing(folded.batch)
                        self.writer.tell(folded.batch)
                        self._note_replaced(account_id, folded)
                        self.cursors[account_id] = rows[-1].seq  # handed over: not again while the writer has them
                        count += len(rows)
                finally:
                    self.ingest.backlog.read_done("sweeper")
                if not rows:
                    break
            if count:
                log.info("[realtime] accountId=%s swept=%d (events of an account no actor reads here)",
                         account_id, count)
                self.ingest.metrics.swept.inc(count)
            handed += count
        return handed
