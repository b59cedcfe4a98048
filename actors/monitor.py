"""StoreMonitorActor: every tick, asks the store whether it answers (a bounded ping) and
the spool how deep it is, and publishes both: /diag must say the store is down while it
is, even when the writer sits inside a call that will only time out later. When the store
answers again it tells the writer to retry at once instead of at the end of its backoff,
and the lease coordinator to have a round now: leases given up during the outage are taken
back then, not at the next regular round (up to lease/3 later). While the store does not
answer it is asked again every RECHECK_S, not every tick: every account waits for that
answer (a ping waits up to PING_TIMEOUT_S itself, so this is no busy loop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import pykka

from wasync.actors.leases_protocol import CoordinatorMsg, Refresh
from wasync.actors.writer_protocol import StoreAnswers
from wasync.runtime.board import Board
from wasync.runtime.spool import Spool
from wasync.runtime.ticker import Timers

log = logging.getLogger("wasync.monitor")

CHECK_EVERY_S = 2.0
RECHECK_S = 0.5  # while the store does not answer


@dataclass(frozen=True)
class Check:
    """Ticker: time to check (the monitor's only message)."""


class StoreMonitorActor(pykka.ThreadingActor):
    def __init__(self, store, spool: Spool, board: Board, writer: pykka.ActorRef, ticker: Timers,
                 to_leases: Callable[[CoordinatorMsg], None], every_s: float = CHECK_EVERY_S,
                 recheck_s: float = RECHECK_S):
        super().__init__()
        self.store, self.spool, self.board, self.writer, self.ticker = store, spool, board, writer, ticker
        self.to_leases = to_leases
        self.every_s, self.recheck_s = every_s, recheck_s
        self._checks = 0
        self._answered = True

    def on_start(self) -> None:
        self.actor_ref.tell(Check())

    def on_receive(self, message: Check):
        try:
            self._check()
        except Exception:
            log.exception("[supervisor] store check failed")
        finally:
            self.ticker.later(self.actor_ref, Check(), self.every_s if self._answered else self.recheck_s)

    def _check(self) -> None:
        self._checks += 1
        if self._answered or self._checks % max(1, round(self.every_s / self.recheck_s)) == 0:
            # Once a period while rechecking: the oldest row's time is a scan of the spool,
            # which is at its largest during an outage.
            self.board.publish_spool(self.spool.depth(), self.spool.oldest_received_ms())
        answered = self.store.ping()  # bounded (PING_TIMEOUT_S): never raises
        self.board.publish_ping(answered, None if answered else "ping failed")
        if answered and not self._answered:
            log.info("[supervisor] the store answers again")
            self.writer.tell(StoreAnswers())
            self.to_leases(Refresh())
        self._answered = answered
